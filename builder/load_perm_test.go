package builder

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// An unreadable fleet directory is reported with the permission error,
// not as a directory without *.hcl files. As root (which reads anything),
// the test binary loads the directory again as the user nobody.
func TestLoadUnreadableDir(t *testing.T) {
	if dir := os.Getenv("DEPLOY_TEST_LOAD_DIR"); dir != "" {
		_, diags := Load(dir)
		os.Stdout.WriteString(diags.Error())
		os.Exit(0)
	}
	base, err := os.MkdirTemp("", "deploy-load-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(filepath.Join(base, "fleet"), 0o700); os.RemoveAll(base) })
	fleet := filepath.Join(base, "fleet")
	if err := os.Mkdir(fleet, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fleet, "fleet.hcl"), []byte("host \"h\" {\n  address = \"10.0.0.1\"\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(fleet, 0o300); err != nil { // writable and searchable, not readable
		t.Fatal(err)
	}
	var out string
	if os.Geteuid() != 0 {
		_, diags := Load(fleet)
		out = diags.Error()
	} else {
		// The test binary, where nobody can run it.
		exe := filepath.Join(base, "builder.test")
		data, err := os.ReadFile(os.Args[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(exe, data, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(base, 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(exe, "-test.run=^TestLoadUnreadableDir$")
		cmd.Env = append(os.Environ(), "DEPLOY_TEST_LOAD_DIR="+fleet)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("loading as nobody: %v\n%s", err, b)
		}
		out = string(b)
	}
	if !strings.Contains(out, "Cannot read the fleet directory") || !strings.Contains(out, "permission denied") {
		t.Fatalf("Load(unreadable dir) = %q, want the permission error", out)
	}
}

// A mode written as a number is refused, with both readings in the hint.
func TestModeNumberHint(t *testing.T) {
	dir := t.TempDir()
	src := "host \"h\" {\n  address = \"10.0.0.1\"\n  file \"/etc/x\" {\n    content = \"x\"\n    mode    = 420\n  }\n}\n"
	if err := os.WriteFile(filepath.Join(dir, "f.hcl"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	f, diags := Load(dir)
	if !diags.HasErrors() {
		diags = Check(context.Background(), f, "")
	}
	if len(diags) != 1 || diags[0].Summary != "Mode is a number" || diags[0].Subject == nil || diags[0].Subject.Start.Line != 5 ||
		!strings.Contains(diags[0].Detail, `mode = "0644" if 420 is the mode in decimal`) || !strings.Contains(diags[0].Detail, `mode = "0420"`) {
		t.Fatalf("mode = 420: %v, want one \"Mode is a number\" at line 5 with both readings", diags)
	}
}
