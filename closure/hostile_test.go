package closure

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
)

// TestReceiveHostileSender plays a malicious or broken operator against
// Receive: every violation is rejected with a clear error and nothing the
// sender sent becomes valid.
func TestReceiveHostileSender(t *testing.T) {
	local := newTestStore(t, DefaultStoreDir)
	ctx := context.Background()
	dir := t.TempDir()
	dep, err := local.AddTree(ctx, writeTree(t, filepath.Join(dir, "dep"), map[string]string{"f": "dependency"}), "dep", nil)
	if err != nil {
		t.Fatal(err)
	}
	top, err := local.AddTree(ctx, writeTree(t, filepath.Join(dir, "top"), map[string]string{"f": "top"}), "top", []string{dep.Path})
	if err != nil {
		t.Fatal(err)
	}
	narOfPath := func(p string) []byte {
		var b bytes.Buffer
		if err := local.Dump(&b, p); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	frame := func(pi *PathInfo, data []byte) string {
		h, _ := json.Marshal(message{T: "path", Path: pi.Path, NarHash: pi.NarHashString(), NarSize: pi.NarSize, References: pi.References})
		return string(h) + "\n" + string(data)
	}
	depNar, topNar := narOfPath(dep.Path), narOfPath(top.Path)
	flipped := bytes.Clone(depNar)
	flipped[bytes.Index(flipped, []byte("dependency"))] ^= 1
	wrongSize := *dep
	wrongSize.NarSize -= 8
	renamed := *dep
	renamed.Path = DefaultStoreDir + "/" + strings.Split(filepath.Base(dep.Path), "-")[0] + "-evil"
	otherRefs := *top
	otherRefs.References = nil

	for _, tt := range []struct {
		name   string
		stream string
		want   string
	}{
		{"flipped byte", frame(dep, flipped), "NAR hash"},
		{"wrong narSize", frame(&wrongSize, depNar[:len(depNar)-8]), "exceeds the 0 bytes left"},
		{"path before its references", frame(top, topNar), "not a valid store path"},
		{"name and hash disagree", frame(&renamed, depNar), "does not match its NAR hash"},
		{"references dropped", frame(dep, depNar) + frame(&otherRefs, topNar), "does not match its NAR hash"},
		{"truncated NAR", frame(dep, depNar[:len(depNar)/2]), "truncated"},
		{"garbage instead of a frame", "\x00\x01 not json\n", "bad control message"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			remote := newTestStore(t, DefaultStoreDir)
			want, _ := json.Marshal(message{T: "want", Paths: []string{dep.Path, top.Path, renamed.Path}})
			in := io.MultiReader(strings.NewReader(string(want)+"\n"), strings.NewReader(tt.stream))
			var out bytes.Buffer
			_, err := remote.Receive(ctx, in, &out, ReceiveOptions{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Receive(%s) = %v, want an error containing %q", tt.name, err, tt.want)
			}
			// The error reached the sender.
			sc := bufio.NewScanner(&out)
			var last message
			for sc.Scan() {
				json.Unmarshal(sc.Bytes(), &last)
			}
			if last.T != "error" && !strings.Contains(tt.want, "bad control") {
				t.Errorf("last message to the sender is %q, want an error", last.T)
			}
			if tt.name == "references dropped" {
				if ok, _ := remote.Valid(dep.Path); !ok {
					t.Fatal("the honest first path was not imported")
				}
				if ok, _ := remote.Valid(top.Path); ok {
					t.Fatal("the path with forged references became valid")
				}
				return
			}
			if paths, _ := remote.Paths(); len(paths) != 0 {
				t.Fatalf("Receive(%s) left valid paths: %v", tt.name, paths)
			}
			if problems, _ := remote.Verify(ctx); len(problems) != 0 {
				t.Fatal(fmt.Sprint(problems))
			}
		})
	}
}
