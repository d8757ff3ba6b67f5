package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/closure/cache/s3cache/miniotest"
	"github.com/declarative/deploy/internal/e2e/cli"
	"github.com/declarative/deploy/internal/testenv"
)

// A closure that deploy cache push uploads to MinIO (the bucket readable
// over HTTP) is read by Nix: nix path-info lists every path with our
// signature, and nix copy trusting our key copies the system into a Nix
// store.
func TestCachePushNixReads(t *testing.T) {
	nix := testenv.NeedTool(t, "nix", "nix-bin")
	srv := miniotest.Start(t, miniotest.Options{})
	srv.Bucket(t, "nixcache", true)
	sk, pk, _ := cache.GenerateKey("deploy-nix-1")
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "cache.key")
	os.WriteFile(keyFile, []byte(sk.String()+"\n"), 0o600)
	agent := filepath.Join(dir, "deploy-agent")
	os.WriteFile(agent, []byte("#!/bin/sh\necho stand-in deploy-agent\n"), 0o755)
	fleetDir := filepath.Join(dir, "fleet")
	os.MkdirAll(fleetDir, 0o755)
	os.WriteFile(filepath.Join(fleetDir, "fleet.hcl"), []byte(`cache {
  url         = "s3://nixcache/fleet?endpoint=`+srv.Endpoint+`"
  public_keys = ["`+pk.String()+`"]
}

host "web1" {
  address = "192.0.2.1"
  file "/etc/motd" {
    content = "hello from a Nix-compatible cache\n"
  }
}
`), 0o644)
	// The real deploy, on the test process's loopback where MinIO listens.
	r := (&cli.Runner{Home: t.TempDir()}).With(append(srv.Env(), "DEPLOY_CACHE_KEY="+keyFile)...)
	r.Run(t, "cache", "push", "--store-dir", "/nix/store", "--agent", agent, fleetDir+"#web1").Want(t, 0)
	system := strings.TrimSpace(r.Run(t, "build", "--store-dir", "/nix/store", "--agent", agent, fleetDir+"#web1").Want(t, 0).Stdout)
	runNix := func(args ...string) ([]byte, error) {
		cmd := exec.Command(nix, append([]string{"--extra-experimental-features", "nix-command"}, args...)...)
		cmd.Env = append(os.Environ(), "NIX_REMOTE=", "HOME="+t.TempDir())
		var errb bytes.Buffer
		cmd.Stderr = &errb
		out, err := cmd.Output()
		if err != nil {
			t.Logf("nix %v: %s", args, errb.String())
		}
		return out, err
	}
	httpURL := srv.Endpoint + "/nixcache/fleet"
	out, err := runNix("path-info", "--store", httpURL, "--json", "--recursive", system)
	if err != nil {
		t.Fatalf("nix path-info --store %s: %v", httpURL, err)
	}
	var infos []struct {
		Path       string   `json:"path"`
		Signatures []string `json:"signatures"`
	}
	if err := json.Unmarshal(out, &infos); err != nil || len(infos) < 3 {
		t.Fatalf("nix path-info: %v\n%s", err, out)
	}
	for _, in := range infos {
		if len(in.Signatures) != 1 || !strings.HasPrefix(in.Signatures[0], "deploy-nix-1:") {
			t.Errorf("nix path-info: %s has signatures %v, want ours", in.Path, in.Signatures)
		}
	}
	root := t.TempDir()
	if _, err := runNix("copy", "--from", httpURL, "--to", root, "--option", "trusted-public-keys", pk.String(), system); err != nil {
		t.Fatalf("nix copy --from %s: %v", httpURL, err)
	}
	manifest, err := os.ReadFile(filepath.Join(root, system, "manifest.json"))
	if err != nil || !bytes.Contains(manifest, []byte("/etc/motd")) {
		t.Fatalf("the system copied into the Nix store: %v", err)
	}
}
