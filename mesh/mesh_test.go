package mesh_test

import (
	"context"
	"testing"

	"github.com/declarative/deploy/mesh"
	"github.com/declarative/deploy/mesh/meshtest"
)

// baseConfig is a Config isolated from the operator's environment: no
// agent, no ~/.ssh, only the given key file.
func baseConfig(t *testing.T, keyFile string) *mesh.Config {
	home := t.TempDir()
	return &mesh.Config{
		IdentityFiles: []string{keyFile},
		Getenv:        envMap(map[string]string{"HOME": home}),
		Logf:          t.Logf,
	}
}

func envMap(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func connect(t *testing.T, cfg *mesh.Config, target mesh.Target) *mesh.Client {
	t.Helper()
	cl, err := cfg.Connect(context.Background(), target)
	if err != nil {
		t.Fatalf("Connect(%+v) = %v", target, err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func TestTransportSSH(t *testing.T) {
	s := meshtest.StartSSHD(t, meshtest.SSHDOptions{})
	cfg := baseConfig(t, s.ClientKeyFile)
	meshtest.RunTransportTests(t, func(t *testing.T) *mesh.Client {
		return connect(t, cfg, s.Target("root"))
	})
}
