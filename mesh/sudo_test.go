package mesh_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/declarative/deploy/internal/testenv"
	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/mesh/meshtest"
)

const (
	sudoUser     = "deploytest"
	sudoPassword = "s3cret 'pass' word"
	sudoersFile  = "/etc/sudoers.d/deploytest-mesh"
)

// sudoUserSetup creates the user deploytest (if absent) with a password and
// installs a sudoers drop-in with the given rule; both are removed when the
// test ends. Tests that use it are serialised with a lock file, across
// processes too.
func sudoUserSetup(t *testing.T, rule string) {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedTool(t, "sudo", "sudo")
	testenv.NeedTool(t, "useradd", "passwd")
	testenv.NeedTool(t, "chpasswd", "passwd")
	lock, err := os.OpenFile("/run/lock/deploy-mesh-sudotest.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lock.Close() })

	if _, err := user.Lookup(sudoUser); err != nil {
		run(t, "useradd", "--create-home", "--shell", "/bin/sh", sudoUser)
		t.Cleanup(func() { removeUser(t) })
	}
	// A password unlocks the account (sshd without PAM refuses locked
	// ones) and is what sudo asks for.
	cmd := exec.Command("chpasswd")
	cmd.Stdin = strings.NewReader(sudoUser + ":" + sudoPassword + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chpasswd: %v\n%s", err, out)
	}
	if err := os.WriteFile(sudoersFile, []byte(rule+"\n"), 0o440); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(sudoersFile) })
	if p, err := exec.LookPath("visudo"); err == nil {
		run(t, p, "-c", "-f", sudoersFile)
	}
}

// removeUser deletes the test user, first ending the processes it still
// runs (sessions of closed connections that are still exiting).
func removeUser(t *testing.T) {
	u, err := user.Lookup(sudoUser)
	if err != nil {
		return
	}
	var out []byte
	for range 50 {
		for _, pid := range processesOf(u.Uid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if out, err = exec.Command("userdel", "--remove", sudoUser).CombinedOutput(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("userdel %s: %v\n%s", sudoUser, err, out)
}

// processesOf lists the processes whose real user ID is uid.
func processesOf(uid string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" && f[1] == uid {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func sudoTarget(s *meshtest.SSHD) mesh.Target {
	target := s.Target(sudoUser)
	target.Sudo = true
	return target
}

func TestSudo(t *testing.T) {
	s := meshtest.StartSSHD(t, meshtest.SSHDOptions{})
	tests := []struct {
		name     string
		rule     string
		password func(*mesh.Config) // sets where the password comes from
		wantErr  error              // nil, mesh.ErrSudoPasswordNeeded, or errRejected
	}{
		{"password from callback", sudoUser + " ALL=(ALL:ALL) ALL", withCallback(sudoPassword), nil},
		{"password from environment", sudoUser + " ALL=(ALL:ALL) ALL", withEnv(sudoPassword), nil},
		{"NOPASSWD", sudoUser + " ALL=(ALL:ALL) NOPASSWD: ALL", func(*mesh.Config) {}, nil},
		{"NOPASSWD, password configured anyway", sudoUser + " ALL=(ALL:ALL) NOPASSWD: ALL", withCallback("unused"), nil},
		{"no password available", sudoUser + " ALL=(ALL:ALL) ALL", func(*mesh.Config) {}, mesh.ErrSudoPasswordNeeded},
		{"wrong password", sudoUser + " ALL=(ALL:ALL) ALL", withCallback("wrong"), errRejected},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sudoUserSetup(t, tt.rule)
			cfg := baseConfig(t, s.ClientKeyFile)
			tt.password(cfg)
			cl := connect(t, cfg, sudoTarget(s))
			out, err := cl.Output(context.Background(), []string{"id", "-u"})
			if tt.wantErr != nil {
				if tt.wantErr == errRejected {
					if err == nil || !strings.Contains(err.Error(), "password rejected") {
						t.Fatalf("Run(id -u) with a wrong password = %v, want a rejection", err)
					}
				} else if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Run(id -u) = %v, want %v", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), sudoPassword) || strings.Contains(err.Error(), "wrong") {
					t.Errorf("error %q quotes a password", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Run(id -u) = %v", err)
			}
			if got := strings.TrimSpace(string(out)); got != "0" {
				t.Errorf("id -u through sudo = %q, want 0", got)
			}
			// stdin reaches the command intact: the password never does.
			in := "line one\nline two\n"
			var cat bytes.Buffer
			if err := cl.Run(context.Background(), []string{"cat"}, strings.NewReader(in), &cat, nil); err != nil {
				t.Fatalf("Run(cat) = %v", err)
			}
			if cat.String() != in {
				t.Errorf("cat through sudo echoed %q, want %q", cat.String(), in)
			}
			// Exit codes and stderr pass through.
			err = cl.Run(context.Background(), []string{"sh", "-c", "echo oops >&2; exit 4"}, nil, nil, nil)
			var ee *mesh.ExitError
			if !errors.As(err, &ee) || ee.Code != 4 || !strings.Contains(ee.Stderr, "oops") {
				t.Errorf("Run(exit 4) through sudo = %v, want exit status 4 with stderr oops", err)
			}
			if strings.Contains(err.Error(), "deploy-sudo") {
				t.Errorf("error %q shows sudo markers", err)
			}
			testSFTPAsRoot(t, cl)
		})
	}
}

var errRejected = errors.New("rejected")

func withCallback(pw string) func(*mesh.Config) {
	return func(c *mesh.Config) {
		c.SudoPassword = func(context.Context, string) (string, error) { return pw, nil }
	}
}

func withEnv(pw string) func(*mesh.Config) {
	return func(c *mesh.Config) {
		home := c.Getenv("HOME")
		c.Getenv = envMap(map[string]string{"HOME": home, "DEPLOY_SUDO_PASSWORD": pw})
	}
}

// testSFTPAsRoot writes a file into /root over SFTP and checks that root
// owns it.
func testSFTPAsRoot(t *testing.T, cl *mesh.Client) {
	t.Helper()
	sc, err := cl.SFTP(context.Background())
	if err != nil {
		t.Fatalf("SFTP() = %v", err)
	}
	defer sc.Close()
	b := make([]byte, 8)
	rand.Read(b)
	path := "/root/.deploy-mesh-test-" + hex.EncodeToString(b)
	defer os.Remove(path)
	f, err := sc.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY)
	if err != nil {
		t.Fatalf("SFTP create %s: %v", path, err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	if _, err := f.Write(data); err != nil {
		t.Fatalf("SFTP write: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("SFTP close: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || fi.Size() != int64(len(data)) {
		t.Errorf("file written over SFTP: uid %d size %d, want uid 0 size %d", st.Uid, fi.Size(), len(data))
	}
	r, err := sc.Open(path)
	if err != nil {
		t.Fatalf("SFTP open: %v", err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("SFTP read back %d bytes, %v; want the %d written", len(got), err, len(data))
	}
}

func TestSFTP(t *testing.T) {
	s := meshtest.StartSSHD(t, meshtest.SSHDOptions{})
	cl := connect(t, baseConfig(t, s.ClientKeyFile), s.Target("root"))
	testSFTPAsRoot(t, cl)
	// The client keeps working after an SFTP session closed.
	if err := cl.Run(context.Background(), []string{"true"}, nil, nil, nil); err != nil {
		t.Fatalf("Run after SFTP = %v", err)
	}
}

// TestTransportSudo runs the conformance suite through sudo.
func TestTransportSudo(t *testing.T) {
	s := meshtest.StartSSHD(t, meshtest.SSHDOptions{})
	sudoUserSetup(t, sudoUser+" ALL=(ALL:ALL) ALL")
	cfg := baseConfig(t, s.ClientKeyFile)
	withCallback(sudoPassword)(cfg)
	meshtest.RunTransportTests(t, func(t *testing.T) *mesh.Client {
		return connect(t, cfg, sudoTarget(s))
	})
}
