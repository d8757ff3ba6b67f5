// Package quickstart prepares a copy of examples/quickstart for test hosts
// (vmtest): the fleet's hosts point at the test hosts, with their host keys
// pinned, and its secrets are encrypted to them. The demo (cmd/deploy-demo)
// and the end-to-end tests deploy it.
package quickstart

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/secrets"
	"github.com/declarative/deploy/vmtest"
)

// Prepare copies the example fleet in src to dir, points its hosts, in
// order, at nw's hosts (address and pinned host key in fleet.hcl), and
// encrypts every secrets/*.age file to those hosts' keys, with a
// plaintext that names it ("demo-NAME-value").
func Prepare(src, dir string, nw *vmtest.Network) error {
	if err := copyTree(src, dir); err != nil {
		return err
	}
	f, diags := builder.Load(dir)
	if diags.HasErrors() {
		return fmt.Errorf("quickstart: %s", diags.Error())
	}
	var rcpts []secrets.Recipient
	data, err := os.ReadFile(filepath.Join(dir, "fleet.hcl"))
	if err != nil {
		return err
	}
	text := string(data)
	for i, h := range f.Hosts {
		if i >= len(nw.Hosts) {
			break
		}
		th := nw.Hosts[i]
		old := fmt.Sprintf("address = %q", h.Address)
		if !strings.Contains(text, old) {
			return fmt.Errorf("quickstart: %s: cannot find %s in fleet.hcl", h.Name, old)
		}
		text = strings.Replace(text, old, fmt.Sprintf("address  = %q\n  host_key = %q", th.Addr().String(), th.HostKeyLine()), 1)
		rcpts = append(rcpts, secrets.Recipient{Owner: "host " + h.Name, Key: th.HostKeyLine()})
	}
	if err := os.WriteFile(filepath.Join(dir, "fleet.hcl"), []byte(text), 0o644); err != nil {
		return err
	}
	return filepath.WalkDir(filepath.Join(dir, "secrets"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".age") {
			return err
		}
		ct, err := secrets.Encrypt([]byte("demo-"+strings.TrimSuffix(d.Name(), ".age")+"-value\n"), rcpts)
		if err != nil {
			return err
		}
		return os.WriteFile(p, ct, 0o644)
	})
}

// Edit replaces the first old in the file p with new; a file without old
// is an error.
func Edit(p, old, new string) error {
	data, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	if !strings.Contains(string(data), old) {
		return fmt.Errorf("quickstart: %s does not contain %q", p, old)
	}
	return os.WriteFile(p, []byte(strings.Replace(string(data), old, new, 1)), 0o644)
}

func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(out, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(out, data, 0o644)
	})
}
