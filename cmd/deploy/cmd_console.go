package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/declarative/deploy/console"
	"github.com/declarative/deploy/fleet"
)

// consoleCommands are deploy console's.
var consoleCommands = []command{
	{name: "publish", summary: "write the fleet console, a static page that reads and verifies the channel in the browser, into the channel's bucket (DIR#TARGET --channel NAME)", run: runConsolePublish, targets: true},
	{name: "serve", summary: "serve the console of a push-mode fleet on localhost, reading the hosts over SSH at each look (TARGET... [--listen 127.0.0.1:8080])", run: runConsoleServe, targets: true},
}

// runConsolePublish is deploy console publish DIR#TARGET --channel NAME:
// write the console page into the channel's prefix of the fleet's bucket
// (docs/pull.md, "The console"), trusting the keys that deploy status
// --channel trusts. It prints the page's URL. Nothing is built; no host is
// contacted.
func runConsolePublish(ctx context.Context, e *env, args []string) error {
	var hf hostFlags
	var pf publisherKeyFlag
	var bf buildFlags
	var opts fleet.ConsoleOptions
	var refresh time.Duration
	fs := newFlags(e, "console publish", "DIR#TARGET... --channel NAME")
	fs.StringVar(&opts.Channel, "channel", "", "the channel's `name` (the hosts' pull { channel })")
	fs.StringVar(&pf.file, "publisher-key", "", "secret key `file` whose public half the page trusts too, beside the hosts' publisher_keys (default $DEPLOY_PUBLISHER_KEY)")
	fs.DurationVar(&refresh, "refresh", 0, "the page reads the channel again this often (default: when asked)")
	fs.BoolVar(&opts.ReadAllStatuses, "read-all-statuses", false, "the page reads every host's own status document (one request each, for staleness), not only those no wave report holds")
	fs.IntVar(&opts.History, "history", 10, "how many publishes the page's history shows")
	fs.BoolVar(&hf.asJSON, "json", false, "print the result as a JSON object on stdout")
	bf.store.register(fs)
	targets, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	if opts.Channel == "" {
		return usageErrorf("console publish: --channel NAME is required")
	}
	if refresh < 0 || refresh > 0 && refresh < time.Second || opts.History < 1 {
		return usageErrorf("console publish: --refresh takes 1s or more, --history 1 or more")
	}
	opts.RefreshSeconds = int(refresh / time.Second)
	pk, err := pf.load(e)
	if err != nil {
		return err
	}
	b, err := bf.builder(e)
	if err != nil {
		return err
	}
	v := newView(e, false, false)
	defer v.Close()
	s := hf.session(e, "console", targets, v)
	s.Builder, s.PublisherKey, s.Getenv = b, pk, e.getenv
	defer s.Close()
	if err := s.Open(); err != nil {
		return err
	}
	res, err := s.PublishConsole(ctx, opts)
	if err != nil {
		return err
	}
	if hf.asJSON {
		return json.NewEncoder(e.stdout).Encode(map[string]any{"key": res.Key, "url": res.URL, "size": res.Size, "config_size": res.ConfigSize,
			"hosts": res.Hosts, "unverifiable": res.Unverifiable})
	}
	fmt.Fprintf(e.stderr, "deploy: wrote %s (%.1f KiB) and the keys it trusts, of %d hosts, beside it (console.json, %.1f KiB)\n", res.Key, float64(res.Size)/1024, res.Hosts, float64(res.ConfigSize)/1024)
	if len(res.Unverifiable) > 0 {
		fmt.Fprintf(e.stderr, "deploy: %s %s no ed25519 host_key: the page shows their statuses as unverified\ndeploy: hint: deploy keyscan HOST prints a host's key for its host_key\n",
			strings.Join(res.Unverifiable, ", "), map[bool]string{true: "has", false: "have"}[len(res.Unverifiable) == 1])
	}
	if res.URL == "" {
		fmt.Fprintf(e.stderr, "deploy: hint: open it where the bucket is served over HTTP(S), at %s under the bucket's prefix\n", res.Key)
		return nil
	}
	if strings.HasPrefix(res.URL, "file://") {
		fmt.Fprintf(e.stderr, "deploy: hint: a browser does not let a page read file:// documents: serve the cache's directory over HTTP (python3 -m http.server, say) and open %s under it\n", res.Key)
	}
	fmt.Fprintln(e.stdout, res.URL)
	return nil
}

// runConsoleServe is deploy console serve TARGET...: the console of a
// push-mode fleet, served on a loopback address until interrupted. Each
// look at the page asks every selected host for its status over SSH,
// through the fleet session (as deploy status does).
func runConsoleServe(ctx context.Context, e *env, args []string) error {
	var hf hostFlags
	var listen string
	var opts fleet.StatusOptions
	fs := newFlags(e, "console serve", "TARGET... [--listen 127.0.0.1:8080]")
	hf.register(fs)
	fs.StringVar(&listen, "listen", "127.0.0.1:8080", "the loopback `address` to serve on (127.0.0.1:0 picks a free port)")
	fs.BoolVar(&opts.Drift, "drift", false, "also compare each host with its current generation at each look (store paths checked for presence only)")
	targets, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	if !console.Loopback(listen) {
		return withHint(usageErrorf("console serve: --listen %q is not a loopback address", listen), ExitUsage,
			"the console serves this machine only (127.0.0.1:PORT, [::1]:PORT, localhost:PORT); reach it from elsewhere through ssh -L")
	}
	s := hf.session(e, "console", targets, newView(e, false, false))
	s.Emit = nil // the page shows each host's result
	defer s.Close()
	if err := s.Open(); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("console serve: %w", err)
	}
	var mu sync.Mutex // one look at the hosts at a time
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: &console.Server{
		Target: strings.Join(targets, " "),
		Logf:   func(format string, args ...any) { fmt.Fprintf(e.stderr, "deploy: "+format+"\n", args...) },
		Status: func(ctx context.Context) (*console.FleetStatus, error) {
			mu.Lock()
			defer mu.Unlock()
			rep, _ := s.StatusWith(ctx, opts)
			if rep == nil {
				return nil, errors.New("no report")
			}
			out := &console.FleetStatus{Target: strings.Join(targets, " "), Time: time.Now().UTC()}
			for _, h := range s.Selected {
				hr := rep.Hosts[h.Name]
				if hr == nil {
					continue
				}
				hs := console.HostStatus{Host: h.Name, Result: string(hr.Result), Status: hr.Status}
				if hr.Err != nil {
					hs.Error = hr.Err.Error()
				}
				out.Hosts = append(out.Hosts, hs)
			}
			return out, nil
		}}}
	fmt.Fprintf(e.stdout, "http://%s/\n", ln.Addr())
	fmt.Fprintf(e.stderr, "deploy: serving the console of %s on http://%s/ until interrupted\n", strings.Join(targets, " "), ln.Addr())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("console serve: %w", err)
	case <-ctx.Done():
	}
	shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(shut)
	return nil
}
