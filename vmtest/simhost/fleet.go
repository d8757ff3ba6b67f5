package simhost

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/secrets"
	"golang.org/x/sync/errgroup"
)

// PullFleet is a fleet directory in pull mode for simulated hosts, and the
// operator who runs the real deploy binary on it: one role (a file, a
// service, a command health check, the pull block) on every host, one
// deployment "all" whose batches are the waves, a cache and channel in an
// S3 bucket, the cache and publisher keys. Its zero value is not ready:
// set the fields, then call [PullFleet.Init].
type PullFleet struct {
	// Dir is the fleet directory (made by Init).
	Dir string
	// Deploy and Agent are the real binaries (deploy-agent beside deploy,
	// as installed); Agent must be readable in the hosts (not under /tmp).
	Deploy, Agent string
	// Hosts are the fleet's hosts.
	Hosts []*Host
	// CacheURL is the cache block's url ("s3://BUCKET/PREFIX?endpoint=...").
	CacheURL string
	// Env is added to every deploy run: the bucket's credentials.
	Env []string
	// StatusCredentials is the content of the hosts' status credentials
	// file (AWS_ACCESS_KEY_ID=... lines), given to them as an age secret
	// encrypted to their host keys; "" for none (a file:// cache).
	StatusCredentials string
	// Canary and BatchSize make the waves (the deployment's canary and
	// batch_size).
	Canary    int
	BatchSize string
	// Interval and Jitter are the pull block's (defaults "10s" and "1s").
	Interval, Jitter string
	// WaveTimeout is the deployment's wave_timeout (default "30m").
	WaveTimeout string

	home      string
	publisher *cache.SecretKey
	cacheKey  *cache.SecretKey
}

// Init makes the fleet directory, the keys and the hosts' secret, and
// writes hosts.hcl and cache.hcl.
func (f *PullFleet) Init() error {
	if f.Interval == "" {
		f.Interval = "10s"
	}
	if f.Jitter == "" {
		f.Jitter = "1s"
	}
	if f.WaveTimeout == "" {
		f.WaveTimeout = "30m"
	}
	if f.BatchSize == "" {
		f.BatchSize = "100%"
	}
	base := filepath.Dir(f.Dir)
	if err := os.MkdirAll(f.Dir, 0o755); err != nil {
		return err
	}
	f.home = filepath.Join(base, "operator")
	if err := os.MkdirAll(f.home, 0o700); err != nil {
		return err
	}
	var err error
	if f.cacheKey, _, err = cache.GenerateKey("sim-cache-1"); err != nil {
		return err
	}
	if f.publisher, _, err = cache.GenerateKey("sim-ci-1"); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(f.home, "cache.key"), []byte(f.cacheKey.String()), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(f.home, "publisher.key"), []byte(f.publisher.String()), 0o600); err != nil {
		return err
	}
	var hosts strings.Builder
	var rcpts []secrets.Recipient
	for _, h := range f.Hosts {
		fmt.Fprintf(&hosts, "host %q {\n  address  = %q\n  host_key = %q\n}\n\n", h.Name(), h.Addr(), h.HostKeyLine())
		rcpts = append(rcpts, secrets.Recipient{Owner: "host " + h.Name(), Key: h.HostKeyLine()})
	}
	if err := f.write("hosts.hcl", hosts.String()); err != nil {
		return err
	}
	if f.StatusCredentials != "" {
		ct, err := secrets.Encrypt([]byte(f.StatusCredentials), rcpts)
		if err != nil {
			return err
		}
		if err := f.write("secrets/pull-status.age", string(ct)); err != nil {
			return err
		}
	}
	return f.write("cache.hcl", fmt.Sprintf("cache {\n  url         = %q\n  public_keys = [%q]\n}\n", f.CacheURL, f.cacheKey.Public().String()))
}

func (f *PullFleet) write(name, content string) error {
	p := filepath.Join(f.Dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, []byte(content), 0o644)
}

// Publisher is the publisher's public key.
func (f *PullFleet) Publisher() *cache.PublicKey { return f.publisher.Public() }

// Write writes the fleet's version: the file /etc/app/version holds
// version; the health check "app" passes only when healthy.
func (f *PullFleet) Write(version string, healthy bool) error {
	health := "ok"
	if !healthy {
		health = "broken"
	}
	var names []string
	for _, h := range f.Hosts {
		names = append(names, fmt.Sprintf("%q", h.Name()))
	}
	secret, creds := "", ""
	if f.StatusCredentials != "" {
		secret = "  secret \"pull-status\" {\n    source = \"secrets/pull-status.age\"\n  }\n"
		creds = "    status_credentials = secret.pull-status.path\n"
	}
	return f.write("fleet.hcl", fmt.Sprintf(`deployment "all" {
  hosts        = [%s]
  canary       = %d
  batch_size   = %q
  wave_timeout = %q
}

role "app" {
%s  pull {
    channel        = "prod"
    interval       = %q
    jitter         = %q
    publisher_keys = [%q]
%s  }
  file "/etc/app/version" {
    content = "%s\n"
  }
  file "/etc/app/health" {
    content = "%s\n"
  }
  service "app" {
    exec_start = "/bin/sleep infinity"
  }
  health_check "app" {
    command  = ["sh", "-c", "grep -qx ok /etc/app/health"]
    timeout  = "5s"
    interval = "200ms"
  }
}

defaults {
  roles = [role.app]
}
`, strings.Join(names, ", "), f.Canary, f.BatchSize, f.WaveTimeout, secret, f.Interval, f.Jitter, f.publisher.Public().String(), creds, version, health))
}

// Target is the fleet's deployment, DIR#all.
func (f *PullFleet) Target() string { return f.Dir + "#all" }

// Command is the real deploy with args, as the operator runs it: its own
// HOME and XDG_CACHE_HOME (the operator's store), the keys, Env.
func (f *PullFleet) Command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, f.Deploy, args...)
	cmd.Env = append(os.Environ(), "HOME="+f.home, "XDG_CACHE_HOME="+filepath.Join(f.home, "cache"), "SSH_AUTH_SOCK=",
		"DEPLOY_CACHE_KEY="+filepath.Join(f.home, "cache.key"), "DEPLOY_PUBLISHER_KEY="+filepath.Join(f.home, "publisher.key"))
	cmd.Env = append(cmd.Env, f.Env...)
	return cmd
}

// Build builds every host's system with deploy build and returns them by
// host name (store paths of the hosts' store directory).
func (f *PullFleet) Build(ctx context.Context) (map[string]string, error) {
	links := filepath.Join(f.home, "build", "system")
	os.MkdirAll(filepath.Dir(links), 0o755)
	var stderr bytes.Buffer
	cmd := f.Command(ctx, "build", "--out-link", links, f.Target())
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("deploy build: %v\n%s", err, stderr.Bytes())
	}
	systems := map[string]string{}
	for _, h := range f.Hosts {
		real, err := os.Readlink(links + "-" + h.Name())
		if err != nil {
			return nil, err
		}
		systems[h.Name()] = "/var/lib/deploy/store/" + filepath.Base(real)
	}
	return systems, nil
}

// LocalStore is the operator's store (what deploy build filled).
func (f *PullFleet) LocalStore() (*closure.Store, error) {
	return closure.NewLocalStore(filepath.Join(f.home, "cache", "deploy"), "/var/lib/deploy/store")
}

// Bootstrap builds the fleet as written and gives every host its system
// as its first generation ([Host.Bootstrap]): the first host receives
// its whole closure, the others are seeded with that store
// ([Network.SeedStores]) and receive only what they lack. At most
// parallel hosts at once; progress, if set, is called after each host.
func (f *PullFleet) Bootstrap(ctx context.Context, n *Network, parallel int, progress func(done int)) error {
	systems, err := f.Build(ctx)
	if err != nil {
		return err
	}
	local, err := f.LocalStore()
	if err != nil {
		return err
	}
	first := f.Hosts[0]
	if _, err := first.Bootstrap(ctx, local, f.Agent, systems[first.Name()]); err != nil {
		return err
	}
	if err := n.SeedStores(ctx, first, f.Hosts[1:]); err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel)
	var done atomic.Int64
	var mu sync.Mutex
	for _, h := range f.Hosts[1:] {
		g.Go(func() error {
			if _, err := h.Bootstrap(gctx, local, f.Agent, systems[h.Name()]); err != nil {
				return err
			}
			d := done.Add(1)
			if progress != nil {
				mu.Lock()
				progress(int(d) + 1)
				mu.Unlock()
			}
			return nil
		})
	}
	return g.Wait()
}
