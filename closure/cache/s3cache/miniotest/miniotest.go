// Package miniotest runs a real MinIO server for tests: the binary the
// project's set-up builds (make deps), on a loopback or test-network
// address, with its own data directory, stopped when the test ends.
package miniotest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/internal/testenv"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Binary finds the MinIO server: $DEPLOY_MINIO, else the one make deps
// built under /var/cache/deploy-tools. Without one the test skips (fails
// under CI=true).
func Binary(t testing.TB) string {
	t.Helper()
	return testenv.CachedTool(t, "DEPLOY_MINIO", "minio-*/minio", "the MinIO server (built from source)")
}

// Options say where the server runs.
type Options struct {
	// Host is the address to listen on (default 127.0.0.1).
	Host string
	// Command makes the server's command (default exec.Command): for
	// running it inside a test network's namespace.
	Command func(name string, args ...string) *exec.Cmd
	// Dial reaches the server from the test (default a net.Dialer).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Server is a running MinIO.
type Server struct {
	// Endpoint is "http://HOST:PORT".
	Endpoint  string
	AccessKey string
	SecretKey string
	// Client is an S3 client for setting up buckets.
	Client *minio.Client

	transport *http.Transport
}

// Start starts a server with a fresh data directory.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	bin := Binary(t)
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Command == nil {
		opts.Command = exec.Command
	}
	if opts.Dial == nil {
		opts.Dial = (&net.Dialer{}).DialContext
	}
	s := &Server{AccessKey: "deploytest", SecretKey: "deploytest-secret-" + strconv.Itoa(rand.IntN(1e9))}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port := 20000 + rand.IntN(40000)
		addr := net.JoinHostPort(opts.Host, strconv.Itoa(port))
		data := t.TempDir()
		cmd := opts.Command(bin, "server", data, "--address", addr, "--console-address", net.JoinHostPort(opts.Host, strconv.Itoa(port+1)), "--quiet")
		cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+s.AccessKey, "MINIO_ROOT_PASSWORD="+s.SecretKey,
			"MINIO_BROWSER=off", "MINIO_UPDATE=off", "HOME="+data)
		logFile, _ := os.Create(filepath.Join(t.TempDir(), "minio.log"))
		cmd.Stdout, cmd.Stderr = logFile, logFile
		if err := cmd.Start(); err != nil {
			t.Fatalf("miniotest: starting %s: %v", bin, err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		s.Endpoint = "http://" + addr
		if err := s.waitReady(opts.Dial, exited); err != nil {
			cmd.Process.Kill()
			log, _ := os.ReadFile(logFile.Name())
			lastErr = fmt.Errorf("%v\n%s", err, log)
			continue
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-exited
		})
		s.transport = &http.Transport{DialContext: opts.Dial}
		c, err := minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""), Secure: false,
			Transport: s.transport})
		if err != nil {
			t.Fatal(err)
		}
		s.Client = c
		return s
	}
	t.Fatalf("miniotest: the server did not start: %v", lastErr)
	return nil
}

func (s *Server) waitReady(dial func(context.Context, string, string) (net.Conn, error), exited chan error) error {
	client := &http.Client{Transport: &http.Transport{DialContext: dial}, Timeout: 2 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("minio exited: %v", err)
		default:
		}
		resp, err := client.Get(s.Endpoint + "/minio/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("minio at %s not ready within 60s", s.Endpoint)
}

// Bucket makes a bucket; with public, anyone may read (get) its objects
// over plain HTTP, as hosts fetch from a cache.
func (s *Server) Bucket(t testing.TB, name string, public bool) {
	t.Helper()
	ctx := context.Background()
	if err := retryNotInitialized(func() error { return s.Client.MakeBucket(ctx, name, minio.MakeBucketOptions{}) }); err != nil {
		t.Fatalf("miniotest: make bucket %q: %v", name, err)
	}
	if public {
		policy := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:GetObject"],"Resource":["arn:aws:s3:::%s/*"]}]}`, name)
		if err := retryNotInitialized(func() error { return s.Client.SetBucketPolicy(ctx, name, policy) }); err != nil {
			t.Fatalf("miniotest: bucket policy of %q: %v", name, err)
		}
	}
}

// retryNotInitialized runs f again while MinIO answers that it is not
// initialized yet (for up to a minute), as it may just after it said
// ready.
func retryNotInitialized(f func() error) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := f()
		if err == nil || !notInitialized(minio.ToErrorResponse(err).Code, minio.ToErrorResponse(err).Message) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Env is the environment that gives an S3 client this server's
// credentials (as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).
func (s *Server) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + s.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s.SecretKey}
}

// TempCredentials are temporary credentials from MinIO's STS.
type TempCredentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
}

// notInitialized says whether an answer of MinIO is its "not initialized,
// please try again": codes XMinioServerNotInitialized (S3),
// STSNotInitialized and STSIAMNotInitialized (STS), and, seen from
// AssumeRole just after ready, InvalidParameterValue with the message
// "Server not initialized, please try again" (its errServerNotInitialized).
func notInitialized(code, message string) bool {
	switch code {
	case "XMinioServerNotInitialized", "STSNotInitialized", "STSIAMNotInitialized":
		return true
	}
	return strings.Contains(message, "not initialized, please try again")
}

// PrefixCredentials returns temporary credentials (STS AssumeRole, one
// hour) whose session policy allows only writing, reading and listing
// objects under prefix in bucket: what a host gets to report its status.
// actions, when given, replace s3:PutObject, s3:GetObject and
// s3:ListBucket (which the policy grants on the bucket for keys under
// prefix, as AWS's s3:prefix condition does).
func (s *Server) PrefixCredentials(t testing.TB, bucket, prefix string, actions ...string) TempCredentials {
	t.Helper()
	if len(actions) == 0 {
		actions = []string{"s3:PutObject", "s3:GetObject", "s3:ListBucket"}
	}
	var objActs []string
	stmts := []string{}
	for _, a := range actions {
		if a == "s3:ListBucket" {
			stmts = append(stmts, fmt.Sprintf(`{"Effect":"Allow","Action":["s3:ListBucket"],"Resource":["arn:aws:s3:::%s"],"Condition":{"StringLike":{"s3:prefix":["%s*"]}}}`, bucket, prefix))
		} else {
			objActs = append(objActs, a)
		}
	}
	if len(objActs) > 0 {
		acts, _ := json.Marshal(objActs)
		stmts = append(stmts, fmt.Sprintf(`{"Effect":"Allow","Action":%s,"Resource":["arn:aws:s3:::%s/%s*"]}`, acts, bucket, prefix))
	}
	policy := `{"Version":"2012-10-17","Statement":[` + strings.Join(stmts, ",") + `]}`
	// MinIO says it is ready (Start) before its IAM subsystem is: until
	// then STS answers "not initialized, please try again" (notInitialized).
	// Those answers, and only they, are waited out, as Start waits for
	// ready.
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := credentials.NewSTSAssumeRole(s.Endpoint, credentials.STSAssumeRoleOptions{AccessKey: s.AccessKey, SecretKey: s.SecretKey,
			Policy: policy, DurationSeconds: 3600})
		if err != nil {
			t.Fatal(err)
		}
		v, err := c.GetWithContext(&credentials.CredContext{Client: &http.Client{Transport: s.transport}})
		var er credentials.ErrorResponse
		if err != nil && errors.As(err, &er) && notInitialized(er.STSError.Code, er.STSError.Message) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatalf("miniotest: assume role: %v", err)
		}
		return TempCredentials{AccessKeyID: v.AccessKeyID, SecretAccessKey: v.SecretAccessKey, SessionToken: v.SessionToken}
	}
}
