package builder

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/modules"
)

// A pull block installs the agent's configuration and the timer and
// service that poll the channel in the cache's bucket.
func TestBuildPull(t *testing.T) {
	dir := writeFleet(t, map[string]string{"fleet.hcl": `
cache {
  url         = "s3://cache/fleet?endpoint=http://10.0.0.9:9000&region=eu-1"
  public_keys = ["cache-1:8W5e9rqXQQ6xwEz2N9UGVpZnKymdqW/Zvr2oTbRJ0z4="]
}
role "pulled" {
  secret "status" {
    source = "status.age"
  }
  pull {
    channel            = "prod"
    interval           = "2s"
    publisher_keys     = ["ci-1:8W5e9rqXQQ6xwEz2N9UGVpZnKymdqW/Zvr2oTbRJ0z4="]
    status_credentials = secret.status.path
    host_key_file      = "/persist/ssh/ssh_host_ed25519_key"
  }
}
host "web1" {
  address = "10.0.0.1"
  roles   = [role.pulled]
}
`, "status.age": "not really age"})
	b := newTestBuilder(t, t.TempDir())
	res := build(t, b, load(t, dir), "web1")
	m := res.Manifest
	i := slices.IndexFunc(m.Files, func(f manifest.File) bool { return f.Path == agentapi.PullConfigFile })
	if i < 0 {
		t.Fatalf("no %s in %+v", agentapi.PullConfigFile, m.Files)
	}
	data, err := os.ReadFile(b.Store.RealPath(m.Files[i].Source))
	if err != nil {
		t.Fatal(err)
	}
	var cfg agentapi.PullConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	want := agentapi.PullConfig{V: agentapi.Version, Host: "web1", Channel: "prod",
		URL:           "http://10.0.0.9:9000/cache/fleet/channels/prod",
		PublisherKeys: []string{"ci-1:8W5e9rqXQQ6xwEz2N9UGVpZnKymdqW/Zvr2oTbRJ0z4="},
		CacheURL:      "http://10.0.0.9:9000/cache/fleet", CacheKeys: []string{"cache-1:8W5e9rqXQQ6xwEz2N9UGVpZnKymdqW/Zvr2oTbRJ0z4="},
		StatusURL:         "s3://cache/fleet/channels/prod?endpoint=http://10.0.0.9:9000&region=eu-1",
		StatusCredentials: "/run/deploy/secrets/status", HostKeyFile: "/persist/ssh/ssh_host_ed25519_key", StateDir: "/var/lib/deploy", IntervalMS: 2000}
	gotJSON, _ := json.Marshal(cfg)
	wantJSON, _ := json.Marshal(want)
	if string(gotJSON) != string(wantJSON) {
		t.Errorf("pull config\n%s\nwant\n%s", gotJSON, wantJSON)
	}
	units := map[string]manifest.Unit{}
	for _, u := range m.Units {
		units[u.Name] = u
	}
	svc, timer := units[modules.PullServiceUnit], units[modules.PullTimerUnit]
	if svc.Start || len(svc.WantedBy) != 0 || !timer.Start || !slices.Equal(timer.WantedBy, []string{"timers.target"}) {
		t.Errorf("units %+v %+v: want the timer started and wanted by timers.target, the service started by it", svc, timer)
	}
	text, _ := os.ReadFile(b.Store.RealPath(timer.Source))
	for _, line := range []string{"OnUnitInactiveSec=2s", "RandomizedDelaySec=200ms", "AccuracySec=100ms", "Unit=deploy-pull.service"} {
		if !strings.Contains(string(text), line+"\n") {
			t.Errorf("timer unit lacks %q:\n%s", line, text)
		}
	}
	text, _ = os.ReadFile(b.Store.RealPath(svc.Source))
	if !strings.Contains(string(text), "ExecStart=/run/deploy/current-system/agent/bin/deploy-agent pull --config /etc/deploy/pull.json\n") {
		t.Errorf("service unit:\n%s", text)
	}
}

// The pull block's limits reach the host's configuration in bytes and
// milliseconds; values that are no size or duration are diagnosed.
func TestBuildPullLimits(t *testing.T) {
	fleet := func(limits string) string {
		return `
cache {
  url         = "file:///srv/cache"
  public_keys = ["cache-1:8W5e9rqXQQ6xwEz2N9UGVpZnKymdqW/Zvr2oTbRJ0z4="]
}
host "web1" {
  address = "10.0.0.1"
  pull {
    channel        = "prod"
    publisher_keys = ["ci-1:8W5e9rqXQQ6xwEz2N9UGVpZnKymdqW/Zvr2oTbRJ0z4="]
` + limits + `
  }
}
`
	}
	dir := writeFleet(t, map[string]string{"fleet.hcl": fleet(`    max_document_size = "64KiB"
    max_nar_size      = "2GiB"
    fetch_timeout     = "30s"
    fetch_min_rate    = "1MiB"`)})
	b := newTestBuilder(t, t.TempDir())
	m := build(t, b, load(t, dir), "web1").Manifest
	i := slices.IndexFunc(m.Files, func(f manifest.File) bool { return f.Path == agentapi.PullConfigFile })
	if i < 0 {
		t.Fatalf("no %s", agentapi.PullConfigFile)
	}
	data, _ := os.ReadFile(b.Store.RealPath(m.Files[i].Source))
	var cfg agentapi.PullConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.MaxDocumentSize != 64<<10 || cfg.MaxNarSize != 2<<30 || cfg.FetchTimeoutMS != 30000 || cfg.FetchMinRate != 1<<20 {
		t.Errorf("limits = %d, %d, %d ms, %d/s; want 64 KiB, 2 GiB, 30000 ms, 1 MiB/s", cfg.MaxDocumentSize, cfg.MaxNarSize, cfg.FetchTimeoutMS, cfg.FetchMinRate)
	}
	for _, bad := range []string{`max_nar_size = "lots"`, `max_document_size = "10"`, `fetch_timeout = "0s"`, `fetch_min_rate = "-1KiB"`} {
		dir := writeFleet(t, map[string]string{"fleet.hcl": fleet("    " + bad)})
		_, diags := newTestBuilder(t, t.TempDir()).Build(context.Background(), load(t, dir), "web1")
		name, _, _ := strings.Cut(bad, " ")
		if !diags.HasErrors() || !strings.Contains(diags.Error(), "Invalid "+name) {
			t.Errorf("%s: diagnostics %v, want Invalid %s", bad, diags, name)
		}
	}
}
