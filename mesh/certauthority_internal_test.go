package mesh

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// hostPatternsMatch agrees with x/crypto's knownhosts, which verifies the
// certificate in the end: both are asked about the same lines.
func TestHostPatternsMatchAgreesWithKnownhosts(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	key, _ := ssh.NewPublicKey(pub)
	hashed := func(name string) string {
		salt := make([]byte, 20)
		rand.Read(salt)
		mac := hmac.New(sha1.New, salt)
		mac.Write([]byte(name))
		return "|1|" + base64.StdEncoding.EncodeToString(salt) + "|" + base64.StdEncoding.EncodeToString(mac.Sum(nil))
	}
	patterns := []string{
		"web1", "web1,web2", "web*", "w?b1", "*", "!web1,*", "*,!web1", "[web1]:2222", "[web*]:2222", "[web1]:22",
		"10.0.0.1", "10.0.0.*", "!10.0.0.2,10.0.0.*", hashed("web1"), hashed("[web1]:2222"), "[10.0.0.1]:2222,web9",
	}
	addrs := []string{"web1:22", "web2:22", "web1:2222", "webX:2222", "10.0.0.1:22", "10.0.0.2:22", "10.0.0.1:2222", "db1:22"}
	dir := t.TempDir()
	for i, p := range patterns {
		f := filepath.Join(dir, "kh")
		if err := os.WriteFile(f, []byte(p+" "+FormatHostKey(key)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cb, err := knownhosts.New(f)
		if err != nil {
			t.Fatalf("pattern %d %q: %v", i, p, err)
		}
		for _, a := range addrs {
			want := cb(a, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 22}, key) == nil
			h, port, _ := net.SplitHostPort(a)
			if got := hostPatternsMatch(p, h, port); got != want {
				t.Errorf("hostPatternsMatch(%q, %q) = %v, knownhosts says %v", p, a, got, want)
			}
		}
	}
}
