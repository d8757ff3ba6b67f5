package cache

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/declarative/deploy/closure"
)

// A realisation is trusted only when signed by a trusted key over its key
// and output; it is written under realisations/ and read back; a missing
// one is "", nil; one naming another store, or another key, is refused.
func TestRealisation(t *testing.T) {
	sk, pk, _ := GenerateKey("ci-1")
	other, _, _ := GenerateKey("ci-1") // same name, other key
	key := "go-package-v1-" + strings.Repeat("ab", 32)
	r := Realisation{Key: key, Out: "/var/lib/deploy/store/" + strings.Repeat("a", 32) + "-hello"}
	sk.SignRealisation(&r)
	if name, err := VerifyRealisation(&r, []*PublicKey{pk}); err != nil || name != "ci-1" {
		t.Fatalf("VerifyRealisation = %q, %v", name, err)
	}
	forged := r
	forged.Out = "/var/lib/deploy/store/" + strings.Repeat("b", 32) + "-hello"
	if _, err := VerifyRealisation(&forged, []*PublicKey{pk}); !errors.Is(err, ErrUntrusted) {
		t.Errorf("another output under the same signature: %v", err)
	}
	byOther := Realisation{Key: r.Key, Out: r.Out}
	other.SignRealisation(&byOther)
	if _, err := VerifyRealisation(&byOther, []*PublicKey{pk}); !errors.Is(err, ErrUntrusted) {
		t.Errorf("signed by another key of the same name: %v", err)
	}

	dir := Dir(t.TempDir())
	p := &Pusher{Cache: dir, Key: sk}
	if err := p.PushRealisations(context.Background(), []Realisation{{Key: key, Out: r.Out}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(string(dir), "realisations", key+".json")); err != nil {
		t.Fatal(err)
	}
	if err := p.PushRealisations(context.Background(), []Realisation{{Key: "../../etc/passwd", Out: r.Out}}); err == nil {
		t.Error("a key that is not a build key was written")
	}
	s := &closure.Store{StoreDir: "/nix/store"}
	f := &Fetcher{Cache: dir, Keys: []*PublicKey{pk}}
	if p, err := f.Substitute(context.Background(), s, "go-package-v1-"+strings.Repeat("cd", 32)); p != "" || err != nil {
		t.Errorf("Substitute of an unrecorded key = %q, %v; want \"\", nil", p, err)
	}
	var ve *VerifyError
	if _, err := f.Substitute(context.Background(), s, key); !errors.As(err, &ve) || !strings.Contains(err.Error(), "is not a path of the store /nix/store") {
		t.Errorf("Substitute of an output in another store = %v", err)
	}
}
