package sigv4_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/declarative/deploy/closure/cache/s3cache/miniotest"
	"github.com/declarative/deploy/internal/sigv4"
	"github.com/minio/minio-go/v7"
)

// The examples of AWS's "Signature Calculations for the Authorization
// Header" (S3 API reference): GET Object with a range, and PUT Object with a
// '$' in the key and a Date header.
var example = sigv4.Credentials{AccessKeyID: "AKIAIOSFODNN7EXAMPLE", SecretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}

func TestAWSExamples(t *testing.T) {
	at := time.Date(2013, 5, 24, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name, method, url string
		headers           map[string]string
		body              string
		signed, sig       string
	}{
		{"GET Object", http.MethodGet, "https://examplebucket.s3.amazonaws.com/test.txt", map[string]string{"Range": "bytes=0-9"}, "",
			"host;range;x-amz-content-sha256;x-amz-date", "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"},
		{"PUT Object", http.MethodPut, "https://examplebucket.s3.amazonaws.com/test$file.text",
			map[string]string{"Date": "Fri, 24 May 2013 00:00:00 GMT", "X-Amz-Storage-Class": "REDUCED_REDUNDANCY"}, "Welcome to Amazon S3.",
			"date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class", "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, tt.url, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.headers {
				req.Header.Set(k, v)
			}
			sigv4.Sign(req, example, "us-east-1", "s3", sigv4.PayloadHash([]byte(tt.body)), at)
			want := "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=" + tt.signed + ", Signature=" + tt.sig
			if got := req.Header.Get("Authorization"); got != want {
				t.Errorf("Authorization = %q\nwant %q", got, want)
			}
		})
	}
	// The key is sent as it was signed.
	req, _ := http.NewRequest(http.MethodPut, "https://examplebucket.s3.amazonaws.com/test$file.text", nil)
	sigv4.Sign(req, example, "us-east-1", "s3", sigv4.EmptyPayloadHash, at)
	if got := req.URL.EscapedPath(); got != "/test%24file.text" {
		t.Errorf("path on the wire %q, want /test%%24file.text", got)
	}
}

// TestMinIO writes and reads objects in a real MinIO with requests signed
// here: with the root credentials, and with temporary credentials whose
// policy allows writing under one prefix only, which MinIO enforces.
func TestMinIO(t *testing.T) {
	srv := miniotest.Start(t, miniotest.Options{})
	srv.Bucket(t, "bkt", false)
	ctx := context.Background()
	root := sigv4.Credentials{AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey}
	do := func(c sigv4.Credentials, method, key string, body []byte) (int, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, srv.Endpoint+"/bkt/"+key, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		sigv4.Sign(req, c, "us-east-1", "s3", sigv4.PayloadHash(body), time.Now())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, data
	}
	for _, key := range []string{"plain.json", "dir/with space+plus$dollar~tilde=eq.json", "ünï/cödé.json"} {
		body := []byte(`{"key":"` + key + `"}`)
		if code, msg := do(root, http.MethodPut, key, body); code != http.StatusOK {
			t.Fatalf("PUT %q: %d %s", key, code, msg)
		}
		obj, err := srv.Client.GetObject(ctx, "bkt", key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(obj)
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("object %q: %q, %v; want %q", key, got, err, body)
		}
		if code, data := do(root, http.MethodGet, key, nil); code != http.StatusOK || !bytes.Equal(data, body) {
			t.Fatalf("signed GET %q: %d %q", key, code, data)
		}
	}

	creds := srv.PrefixCredentials(t, "bkt", "channels/prod/status/")
	tmp := sigv4.Credentials{AccessKeyID: creds.AccessKeyID, SecretAccessKey: creds.SecretAccessKey, SessionToken: creds.SessionToken}
	if code, msg := do(tmp, http.MethodPut, "channels/prod/status/h1.json", []byte(`{}`)); code != http.StatusOK {
		t.Fatalf("PUT under the allowed prefix with temporary credentials: %d %s", code, msg)
	}
	if code, _ := do(tmp, http.MethodPut, "channels/prod/hosts/h1.json", []byte(`{}`)); code != http.StatusForbidden {
		t.Fatalf("PUT outside the allowed prefix: %d, want 403", code)
	}
	bad := tmp
	bad.SecretAccessKey += "x"
	if code, _ := do(bad, http.MethodPut, "channels/prod/status/h1.json", []byte(`{}`)); code != http.StatusForbidden {
		t.Fatalf("PUT with a wrong secret: %d, want 403", code)
	}
}
