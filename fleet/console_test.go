package fleet

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/declarative/deploy/console"
)

// PublishConsole writes the page and, beside it, the keys that status
// --channel trusts: the hosts' publisher keys and each host_key; a host
// without one is named (its statuses show as unverified).
func TestPublishConsole(t *testing.T) {
	f := newPullFleet(t, "", "c")
	s := f.session(t, "all", &eventLog{})
	s.PublisherKey = nil // only what the hosts trust
	res, err := s.PublishConsole(context.Background(), ConsoleOptions{Channel: "prod", History: 3})
	if err != nil {
		t.Fatal(err)
	}
	if res.Key != "channels/prod/index.html" || res.Hosts != 3 || !slices.Equal(res.Unverifiable, []string{"c"}) {
		t.Errorf("PublishConsole = %+v, want channels/prod/index.html, 3 hosts, c unverifiable", res)
	}
	if want := "file://" + f.cacheDir + "/channels/prod/index.html"; res.URL != want {
		t.Errorf("URL %q, want %q", res.URL, want)
	}
	page, err := os.ReadFile(filepath.Join(f.channelDir(), console.PageKey))
	if err != nil || len(page) != res.Size || len(page) > console.MaxPageSize || !strings.Contains(string(page), `data-channel="prod"`) {
		t.Errorf("the page: %d bytes (%v), want %d under %d for channel prod", len(page), err, res.Size, console.MaxPageSize)
	}
	data, err := os.ReadFile(filepath.Join(f.channelDir(), console.ConfigKey))
	if err != nil {
		t.Fatal(err)
	}
	var cfg console.Config
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	pub := base64.StdEncoding.EncodeToString(f.publisher.Key.Public().(ed25519.PublicKey))
	if len(cfg.PublisherKeys) != 1 || cfg.PublisherKeys[0] != (console.Key{Name: "ci-1", Key: pub}) || cfg.PublisherThreshold != 1 || cfg.History != 3 || cfg.Channel != "prod" {
		t.Errorf("console.json %+v, want ci-1's key, threshold 1, history 3", cfg)
	}
	for _, h := range cfg.Hosts {
		want := ""
		if k, ok := f.hostKeys[h.Name]; ok {
			want = base64.StdEncoding.EncodeToString(k.Public().(ed25519.PublicKey))
		}
		if h.Key != want {
			t.Errorf("console.json: %s's key %q, want %q", h.Name, h.Key, want)
		}
	}

	// A channel no selected host follows: nothing to trust.
	var ce *ConfigError
	if _, err := s.PublishConsole(context.Background(), ConsoleOptions{Channel: "staging"}); !errors.As(err, &ce) || !strings.Contains(fmt.Sprint(ce.Diags), "could verify nothing") {
		t.Errorf("PublishConsole of a channel nobody follows = %v, want a configuration error", err)
	}
}
