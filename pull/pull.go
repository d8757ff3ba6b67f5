// Package pull runs on a host in pull mode: one [Agent.Poll] reads the
// host's release from its channel with a conditional GET, verifies it
// ([channel.VerifyRelease]), waits for the earlier waves ([channel.Gate]),
// fetches the closure from the binary cache (verified by [cache.Fetcher]),
// activates it with the system's own agent exactly as a push deploy does
// (health checks and automatic rollback; the checks are the confirmation),
// and reports a status document signed with the host's SSH ed25519 host key
// ([channel.SignStatus]). deploy-agent pull runs one poll; a
// systemd timer runs it every interval. docs/pull.md is the operator's
// description.
//
// # State
//
// StateDir/pull/CHANNEL.json records, across reboots and written atomically:
// the last accepted serial (a release below or at it is refused), the last
// document read and its ETag (for conditional GETs), the SHA-256 of the last
// document handled (it is not handled twice), an activation in progress
// (so that a poll killed by a restart or a reboot still reports how it
// ended), and the last status with whether it reached the channel (a
// failed write is retried at the next poll).
package pull

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"github.com/declarative/deploy/activation"
	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/internal/atomicfile"
	"github.com/declarative/deploy/internal/limits"
	"github.com/declarative/deploy/pull/channel"
)

// Agent polls one channel for one host. Set Config (and Layout when the
// run directory is not the default), then call [Agent.Poll]; the other
// fields have working defaults.
type Agent struct {
	Config *agentapi.PullConfig
	// Layout is the agent's layout; its StateDir defaults to the
	// configuration's.
	Layout activation.Layout
	// Source reads the channel (default: Config.URL over HTTP(S)).
	Source channel.Source
	// Status writes the host's status (default: Config.StatusURL, or none).
	Status channel.Writer
	// HostKey signs the host's status (default: the OpenSSH ed25519 key in
	// Config.HostKeyFile, else [agentapi.DefaultHostKeyFile], read when a
	// status is written).
	HostKey ed25519.PrivateKey
	// Cache is where closures are fetched from (default Config.CacheURL).
	Cache cache.Backend
	// Client is the HTTP client of the defaults (nil: one per backend).
	Client *http.Client
	// Activate activates system with metadata meta and returns the
	// activation's result; the default runs the system's own agent:
	// SYSTEM/agent/bin/deploy-agent activate --confirm-timeout 0.
	Activate func(ctx context.Context, system string, meta map[string]string) (*agentapi.Result, error)
	// Version is the agent's version, for the status.
	Version string
	// Logf receives what happens (the journal, through the service).
	Logf func(format string, args ...any)
	// Now is the clock (default time.Now).
	Now func() time.Time

	// onDisk is the state file's content as last read or written: a
	// poll that changes nothing (a host waiting for a wave) writes
	// nothing.
	onDisk []byte
}

// Result says what one poll did.
type Result struct {
	// Action is what happened: "none" (nothing new), "no-release",
	// "refused", "waiting", "halted", "busy" (an activation or a deploy
	// run holds the host), "unchanged", or the outcome of an activation
	// ("done", "rolled-back", "failed").
	Action string
	Serial int64
	// Status is the host's status after the poll (nil when it has none).
	Status *agentapi.PullStatus
	// Reported says whether the status reached the channel.
	Reported bool
}

// state is StateDir/pull/CHANNEL.json.
type state struct {
	V       int    `json:"v"`
	Channel string `json:"channel"`
	// Serial is the last accepted serial.
	Serial int64 `json:"serial"`
	// ETag and Doc are the last release document read.
	ETag string `json:"etag,omitempty"`
	Doc  []byte `json:"doc,omitempty"`
	// Done is the hex SHA-256 of the last document handled, Accepted that
	// of the document that raised Serial (read again, it is no replay).
	Done     string `json:"done,omitempty"`
	Accepted string `json:"accepted,omitempty"`
	// Pending is an activation started and not yet reported.
	Pending *pending `json:"pending,omitempty"`
	// Status is the last status, and Reported whether it was written.
	Status   *agentapi.PullStatus `json:"status,omitempty"`
	Reported bool                 `json:"reported"`

	// With a root of trust (docs/trust.md): Root is the newest root
	// accepted through the channel's chain (the generation's own may be
	// newer); MinRoot the root version at which the serial was last reset.
	Root    json.RawMessage `json:"root,omitempty"`
	MinRoot int64           `json:"min_root,omitempty"`
	// TSETag and TSDoc are the last timestamp document read; Timestamp is
	// the last one accepted (its version never goes down).
	TSETag    string          `json:"ts_etag,omitempty"`
	TSDoc     []byte          `json:"ts_doc,omitempty"`
	Timestamp json.RawMessage `json:"timestamp,omitempty"`
	// Stale is why the channel is stale, since StaleSince ("" when fresh).
	Stale      string    `json:"stale,omitempty"`
	StaleSince time.Time `json:"stale_since,omitzero"`

	// Gate is what the wave gate verified of the earlier waves of the
	// release it waits on; Wave the wave report this host adds its final
	// status to (docs/pull.md, "Waves").
	Gate *channel.GateCache `json:"gate,omitempty"`
	Wave *waveRef           `json:"wave,omitempty"`
}

// waveRef is the wave of the last accepted release, whose report the
// host's final status joins when a later wave reads it.
type waveRef struct {
	Serial int64 `json:"serial"`
	Root   int64 `json:"root,omitempty"`
	Wave   int   `json:"wave"`
	Waves  int   `json:"waves"`
	// Size is the number of the wave's hosts (0 from an older
	// publisher); Gatherer says that this host gathers the wave's report,
	// and Gathered that the report is complete.
	Size     int  `json:"size,omitempty"`
	Gatherer bool `json:"gatherer,omitempty"`
	Gathered bool `json:"gathered,omitempty"`
	// Added says that the final status is in the wave's report, or in
	// its entries, whose gatherers make the report.
	Added bool `json:"added,omitempty"`
}

type pending struct {
	Serial int64     `json:"serial"`
	System string    `json:"system"`
	Wave   int       `json:"wave"`
	Since  time.Time `json:"since"`
}

func (a *Agent) logf(format string, args ...any) {
	if a.Logf != nil {
		a.Logf(format, args...)
	}
}

func (a *Agent) now() time.Time {
	if a.Now != nil {
		return a.Now().UTC()
	}
	return time.Now().UTC()
}

func (a *Agent) layout() activation.Layout {
	l := a.Layout
	if l.StateDir == "" {
		l.StateDir = a.Config.StateDir
	}
	if l.StateDir == "" {
		l.StateDir = activation.DefaultStateDir
	}
	return l
}

func (a *Agent) stateFile() string {
	return filepath.Join(a.layout().StateDir, "pull", a.Config.Channel+".json")
}

// ReadStatus returns the host's last status for cfg's channel (deploy-agent
// pull --status), nil when it never polled.
func ReadStatus(stateDir string, cfg *agentapi.PullConfig) (*agentapi.PullStatus, error) {
	a := &Agent{Config: cfg, Layout: activation.Layout{StateDir: stateDir}}
	st, err := a.readState()
	if err != nil {
		return nil, err
	}
	return st.Status, nil
}

func (a *Agent) readState() (*state, error) {
	data, err := os.ReadFile(a.stateFile())
	if errors.Is(err, fs.ErrNotExist) {
		return &state{V: 1, Channel: a.Config.Channel}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pull state: %w", err)
	}
	st := &state{}
	if err := json.Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("pull state %q: %w", a.stateFile(), err)
	}
	a.onDisk = data
	return st, nil
}

func (a *Agent) writeState(st *state) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	if bytes.Equal(data, a.onDisk) {
		return nil
	}
	if err := atomicfile.Write(a.stateFile(), data, 0o600); err != nil {
		return err
	}
	a.onDisk = data
	return nil
}

// ReadConfig reads a host's pull configuration.
func ReadConfig(file string) (*agentapi.PullConfig, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("pull config: %w", err)
	}
	cfg := &agentapi.PullConfig{}
	if err := agentapi.Decode("pull config", data, cfg); err != nil {
		return nil, fmt.Errorf("pull config %q: %w", file, err)
	}
	if err := channel.CheckName("channel", cfg.Channel); err != nil {
		return nil, fmt.Errorf("pull config %q: %w", file, err)
	}
	if err := channel.CheckName("host", cfg.Host); err != nil {
		return nil, fmt.Errorf("pull config %q: %w", file, err)
	}
	if cfg.URL == "" || cfg.CacheURL == "" || (len(cfg.PublisherKeys) == 0 && cfg.Root == nil) || len(cfg.CacheKeys) == 0 {
		return nil, fmt.Errorf("pull config %q: needs url, cache_url, publisher_keys or root, and cache_keys", file)
	}
	return cfg, nil
}

func parseKeys(what string, keys []string) ([]*cache.PublicKey, error) {
	var out []*cache.PublicKey
	for _, k := range keys {
		pk, err := cache.ParsePublicKey(k)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		out = append(out, pk)
	}
	return out, nil
}

func (a *Agent) setup() error {
	var err error
	if a.Source == nil {
		if a.Source, err = channel.OpenSource(a.Config.URL, a.Client); err != nil {
			return err
		}
		if h, ok := a.Source.(*channel.HTTPSource); ok {
			h.MaxSize, h.Timeout = a.Config.MaxDocumentSize, time.Duration(a.Config.FetchTimeoutMS)*time.Millisecond
		}
	}
	if a.Cache == nil {
		if a.Cache, err = cache.Open(a.Config.CacheURL, a.Client); err != nil {
			return err
		}
	}
	if a.Status == nil && a.Config.StatusURL != "" {
		if a.Status, err = channel.OpenWriter(a.Config.StatusURL, a.Config.StatusCredentials, a.Client); err != nil {
			return err
		}
	}
	if a.Activate == nil {
		a.Activate = a.runActivate
	}
	return nil
}

// Poll runs one poll. An error is a poll that could not finish (the
// channel or the cache unreachable, the state unwritable); everything a
// release can come to, refusals and rollbacks included, is a Result.
func (a *Agent) Poll(ctx context.Context) (*Result, error) {
	if err := a.setup(); err != nil {
		return nil, err
	}
	l := a.layout()
	if err := os.MkdirAll(filepath.Dir(a.stateFile()), 0o700); err != nil {
		return nil, err
	}
	lockf, err := os.OpenFile(a.stateFile()+".lock", os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	defer lockf.Close()
	if err := syscall.Flock(int(lockf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return &Result{Action: "busy"}, nil
	}
	st, err := a.readState()
	if err != nil {
		return nil, err
	}
	p := &poll{a: a, l: l, st: st}
	res, err := p.run(ctx)
	if res != nil {
		res.Status, res.Reported = st.Status, st.Reported
	}
	return res, err
}

type poll struct {
	a  *Agent
	l  activation.Layout
	st *state
	// trust is the channel's root, nil without one.
	trust *channel.Trust
	// dirty says that the state changed and must be saved.
	dirty bool
}

func (p *poll) save() error { return p.a.writeState(p.st) }

// report sets the status (update changes a copy of the last one), saves
// the state and writes the status to the channel; a status equal to the
// last reported one is not written again.
func (p *poll) report(ctx context.Context, update func(s *agentapi.PullStatus)) error {
	next := agentapi.PullStatus{Host: p.a.Config.Host, Channel: p.a.Config.Channel}
	if p.st.Status != nil {
		next = *p.st.Status
	}
	update(&next)
	next.V, next.Agent = agentapi.Version, p.a.Version
	next.Stale, next.StaleSince = p.st.Stale, p.st.StaleSince
	if p.trust != nil {
		next.Root = p.trust.Root.Version
	}
	if cur, _ := p.l.CurrentGeneration(); cur > 0 {
		if rs, err := p.l.ReadState(); err == nil {
			next.Current, next.CurrentSystem = cur, rs.CurrentSystem
		}
	} else {
		next.Current, next.CurrentSystem = 0, ""
	}
	if p.st.Status != nil && p.st.Reported && sameStatus(p.st.Status, &next) {
		return p.save()
	}
	next.Time = p.a.now()
	prev := p.st.Status
	changed := prev == nil || prev.Serial != next.Serial || prev.Outcome != next.Outcome
	if changed || prev.OutcomeTime.IsZero() {
		next.OutcomeTime = next.Time
	}
	p.st.Status, p.st.Reported = &next, false
	if err := p.save(); err != nil {
		return err
	}
	err := p.flush(ctx)
	if changed {
		p.a.notify(ctx, &next)
	}
	return err
}

func sameStatus(a, b *agentapi.PullStatus) bool {
	x, y := *a, *b
	x.Time, y.Time, x.OutcomeTime, y.OutcomeTime = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	ja, _ := json.Marshal(x)
	jb, _ := json.Marshal(y)
	return bytes.Equal(ja, jb)
}

// flush writes the last status if it did not reach the channel yet, and
// adds a final one to its wave ([poll.addToWave]) while that is due.
func (p *poll) flush(ctx context.Context) error {
	if p.st.Status == nil || p.a.Status == nil {
		return nil
	}
	if p.st.Reported && !p.waveDue() {
		return nil
	}
	key, err := p.a.hostKey()
	if err != nil {
		// Unsigned, the report would count for nothing: the later waves
		// believe only statuses signed by this host's key.
		p.a.logf("reporting to %s: %v (again at the next poll)", p.a.Status, err)
		return nil
	}
	if !p.st.Reported {
		if err := channel.PutStatus(ctx, p.a.Status, p.st.Status, key); err != nil {
			p.a.logf("reporting to %s: %v (again at the next poll)", p.a.Status, err)
			return nil
		}
		p.st.Reported = true
	}
	return p.addToWave(ctx, key)
}

// gatherEvery is how often a gatherer lists its wave's entries while it
// stays in a poll for them ([Agent.gatherStay]).
const gatherEvery = 2 * time.Second

// gatherStay is how long a gatherer's poll stays to gather its wave's
// report when the wave is not complete: half the poll interval, at most
// 30 seconds (none when the interval is unknown); the poll after it goes
// on, once per poll.
func (a *Agent) gatherStay() time.Duration {
	return min(time.Duration(a.Config.IntervalMS)*time.Millisecond/2, 30*time.Second)
}

// gatherFor bounds how long a gatherer keeps gathering its wave's report
// after its own outcome, when the wave never completes (a host of it is
// gone): the later waves decide from the hosts' own statuses at their
// deadline anyway.
const gatherFor = 24 * time.Hour

// waveDue reports whether the host's final status reached the channel but
// not yet its wave's entries, or, for a gatherer, its wave's report is
// not complete yet.
func (p *poll) waveDue() bool {
	w, s := p.st.Wave, p.st.Status
	_, ok := p.a.Status.(channel.Store)
	if !ok || w == nil || s == nil || s.Serial != w.Serial || !s.Outcome.Final() {
		return false
	}
	return !w.Added || w.Gatherer && !w.Gathered && p.a.now().Sub(s.OutcomeTime) < gatherFor
}

// addToWave adds the host's final status to its wave's report
// ([channel.AddToWave]) once it reached status/HOST.json: the later
// waves and deploy publish --wait read it; a failure is tried again at the
// next poll.
func (p *poll) addToWave(ctx context.Context, key ed25519.PrivateKey) error {
	if !p.waveDue() {
		return p.save()
	}
	w, s := p.st.Wave, p.st.Status
	store := publicRead{p.a.Status.(channel.Store), p}
	rel := &agentapi.Release{Channel: p.a.Config.Channel, Serial: w.Serial, RootVersion: w.Root, Wave: w.Wave, WaveSize: w.Size, Gatherer: w.Gatherer}
	var done bool
	var err error
	if w.Added {
		// A gatherer whose wave was not complete at its last poll.
		done, err = channel.GatherWave(ctx, store, rel)
	} else {
		var doc []byte
		if doc, err = channel.SignStatus(channel.WaveEntry(s), key); err == nil {
			done, err = channel.AddToWave(ctx, store, rel, p.a.Config.Host, doc)
			w.Added = err == nil
		}
	}
	// A gatherer whose wave is not complete stays a while, listing every
	// few seconds: the report then follows the wave's last entry within
	// seconds, not at this host's next poll.
	for stay := p.a.gatherStay(); err == nil && !done && w.Added && w.Gatherer && stay > 0; stay -= gatherEvery {
		select {
		case <-ctx.Done():
			return p.save()
		case <-time.After(gatherEvery):
		}
		done, err = channel.GatherWave(ctx, store, rel)
	}
	if err != nil {
		p.a.logf("adding the status to wave %d's report: %v (again at the next poll)", w.Wave, err)
	}
	w.Gathered = done
	return p.save()
}

// hostKey returns the key that signs the host's status.
func (a *Agent) hostKey() (ed25519.PrivateKey, error) {
	if a.HostKey != nil {
		return a.HostKey, nil
	}
	file := a.Config.HostKeyFile
	if file == "" {
		file = agentapi.DefaultHostKeyFile
	}
	k, err := channel.LoadHostKey(file)
	if err != nil {
		return nil, err
	}
	a.HostKey = k
	return k, nil
}

func docHash(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// untrusted reads and verifies the release of a channel without a root:
// one conditional GET, a signature by one of publisher_keys. It returns
// the document, its hash and the release to act on, or the poll's result.
func (p *poll) untrusted(ctx context.Context) (string, *agentapi.Release, *Result, error) {
	a, st, cfg := p.a, p.st, p.a.Config
	etag := ""
	if st.Doc != nil {
		etag = st.ETag
	}
	data, newETag, err := a.getDocument(ctx, channel.ReleaseKey(cfg.Host), etag)
	var tooLarge *limits.TooLargeError
	switch {
	case errors.As(err, &tooLarge):
		return "", nil, p.refuseTooLarge(ctx, err), nil
	case errors.Is(err, channel.ErrNotModified):
		data = st.Doc
	case errors.Is(err, fs.ErrNotExist):
		return "", nil, &Result{Action: "no-release"}, p.flush(ctx)
	case err != nil:
		p.flush(ctx)
		return "", nil, nil, fmt.Errorf("reading the release: %w", err)
	default:
		st.Doc, st.ETag = data, newETag
		if err := p.save(); err != nil {
			return "", nil, nil, err
		}
	}
	h := docHash(data)
	if h == st.Done || h == st.Accepted {
		st.Done = h
		return "", nil, &Result{Action: "none", Serial: st.Serial}, p.flush(ctx)
	}
	keys, err := parseKeys("publisher_keys", cfg.PublisherKeys)
	if err != nil {
		return "", nil, nil, err
	}
	rel, err := channel.VerifyRelease(data, keys, cfg.Channel, cfg.Host, st.Serial)
	rel, res, err := p.checkRelease(ctx, rel, h, err)
	return h, rel, res, err
}

// checkRelease completes a release's verification (its system is in this
// host's store) and turns a refusal into the poll's result.
func (p *poll) checkRelease(ctx context.Context, rel *agentapi.Release, h string, err error) (*agentapi.Release, *Result, error) {
	if err == nil {
		if _, _, serr := closure.SplitPath(filepath.Join(p.l.StateDir, "store"), rel.System); serr != nil {
			err = &channel.RefusedError{Serial: rel.Serial, Err: channel.ErrMalformed, Detail: fmt.Sprintf("system %q is not in this host's store", rel.System)}
		}
	}
	var refused *channel.RefusedError
	if errors.As(err, &refused) {
		p.a.logf("%v", err)
		p.st.Done = h
		return nil, &Result{Action: "refused", Serial: refused.Serial}, p.report(ctx, func(s *agentapi.PullStatus) {
			s.Refused = &agentapi.PullRefusal{Serial: refused.Serial, Reason: err.Error(), Time: p.a.now()}
		})
	}
	return rel, nil, err
}

func (p *poll) run(ctx context.Context) (*Result, error) {
	a, st := p.a, p.st
	cfg := a.Config
	if st.Pending != nil {
		if err := p.l.CheckLock(); err != nil {
			a.logf("the activation of serial %d is still running (%v)", st.Pending.Serial, err)
			return &Result{Action: "busy", Serial: st.Pending.Serial}, p.flush(ctx)
		}
		if err := p.resolvePending(ctx); err != nil {
			return nil, err
		}
	}
	// 1. The release, verified: its signature, channel, host and serial
	// (and with a root: the timestamp, fresh, naming it).
	var (
		h    string
		rel  *agentapi.Release
		done *Result
		err  error
	)
	if cfg.Root != nil {
		h, rel, done, err = p.trusted(ctx)
	} else {
		h, rel, done, err = p.untrusted(ctx)
	}
	if done != nil || err != nil {
		return done, err
	}
	inRelease := func(s *agentapi.PullStatus, o agentapi.PullOutcome, msg string) {
		s.Serial, s.System, s.Wave, s.Outcome, s.Message = rel.Serial, rel.System, rel.Wave, o, msg
		s.Generation, s.Check = 0, ""
	}

	// 3. The earlier waves.
	if w := st.Wave; w == nil || w.Serial != rel.Serial || w.Root != rel.RootVersion {
		st.Wave = &waveRef{Serial: rel.Serial, Root: rel.RootVersion, Wave: rel.Wave, Waves: rel.Waves, Size: rel.WaveSize, Gatherer: rel.Gatherer}
	}
	if st.Gate == nil {
		st.Gate = &channel.GateCache{}
	}
	decision, reason, err := channel.GateWaves(ctx, rel, a.now(), st.Gate, channel.GateSource{Get: p.waveReport, Status: p.statusOf, Gather: p.gatherWave(rel)})
	if err != nil {
		p.flush(ctx)
		return nil, fmt.Errorf("reading the earlier waves' status: %w", err)
	}
	if decision != channel.Wait {
		st.Gate = nil
	}
	switch decision {
	case channel.Wait:
		a.logf("serial %d (wave %d of %d): %s", rel.Serial, rel.Wave, rel.Waves, reason)
		return &Result{Action: "waiting", Serial: rel.Serial}, p.report(ctx, func(s *agentapi.PullStatus) { inRelease(s, agentapi.PullWaiting, reason) })
	case channel.Halt:
		a.logf("serial %d: not activated: %s", rel.Serial, reason)
		st.Serial, st.Done, st.Accepted = rel.Serial, h, h
		return &Result{Action: "halted", Serial: rel.Serial}, p.report(ctx, func(s *agentapi.PullStatus) { inRelease(s, agentapi.PullHalted, reason) })
	}

	// The deployment's maintenance window: outside it the host waits,
	// reporting when it opens (a window the agent cannot read is a refusal
	// of nothing: the release says it and is signed, so it waits, saying
	// why).
	if rel.Window != "" {
		w, err := agentapi.ParseWindow(rel.Window)
		now := a.now()
		var msg string
		switch {
		case err != nil:
			msg = fmt.Sprintf("waiting: the release's window cannot be read (%v)", err)
		case !w.Contains(now):
			msg = fmt.Sprintf("waiting for the deployment's window (%s): it opens %s", w.Spec, w.NextOpen(now).In(w.Loc).Format("Mon 2006-01-02 15:04 MST"))
		}
		if msg != "" {
			a.logf("serial %d: %s", rel.Serial, msg)
			return &Result{Action: "waiting", Serial: rel.Serial}, p.report(ctx, func(s *agentapi.PullStatus) { inRelease(s, agentapi.PullWaiting, msg) })
		}
	}

	// 4. The host must be free: no push run, no activation.
	unlock, holder, err := p.runLock(ctx, rel)
	if err != nil {
		return nil, err
	}
	if unlock == nil {
		msg := "a deploy run holds the run lock (" + holder + "); trying again at the next poll"
		a.logf("serial %d: %s", rel.Serial, msg)
		return &Result{Action: "busy", Serial: rel.Serial}, p.flush(ctx)
	}
	defer unlock()
	if err := p.l.CheckLock(); err != nil {
		a.logf("serial %d: an activation runs (%v); trying again at the next poll", rel.Serial, err)
		return &Result{Action: "busy", Serial: rel.Serial}, p.flush(ctx)
	}

	// 5. Already running it: nothing to activate.
	if rs, err := p.l.ReadState(); err == nil && rs.CurrentSystem == rel.System && rs.Current > 0 {
		if g, err := p.l.Generation(rs.Current); err == nil && !g.Failed {
			a.logf("serial %d: already running %s (generation %d)", rel.Serial, rel.System, rs.Current)
			st.Serial, st.Done, st.Accepted = rel.Serial, h, h
			p.setRoot(rel.System)
			return &Result{Action: "unchanged", Serial: rel.Serial}, p.report(ctx, func(s *agentapi.PullStatus) {
				inRelease(s, agentapi.PullDone, "already running this system")
				s.Generation = rs.Current
			})
		}
	}

	// 6. The closure, verified path by path.
	cacheKeys, err := parseKeys("cache_keys", cfg.CacheKeys)
	if err != nil {
		return nil, err
	}
	store := closure.NewTargetStore(p.l.StateDir)
	f := &cache.Fetcher{Cache: a.Cache, Keys: cacheKeys, MaxNarInfoSize: cfg.MaxDocumentSize, MaxNarSize: cfg.MaxNarSize,
		Timeout: time.Duration(cfg.FetchTimeoutMS) * time.Millisecond, MinRate: cfg.FetchMinRate}
	start := time.Now()
	paths, err := f.FetchClosure(ctx, store, rel.System)
	var ve *cache.VerifyError
	if errors.As(err, &ve) {
		a.logf("serial %d: closure refused: %v", rel.Serial, err)
		st.Serial, st.Done, st.Accepted = rel.Serial, h, h
		return &Result{Action: "refused", Serial: rel.Serial}, p.report(ctx, func(s *agentapi.PullStatus) {
			inRelease(s, agentapi.PullRefused, "closure refused: "+err.Error())
		})
	}
	if err != nil {
		// Not a verdict on the release: the cache is unreachable, or does
		// not have the closure (yet). Said in the status, tried again at
		// the next poll.
		msg := fmt.Sprintf("fetching the closure: %v (trying again at the next poll)", err)
		a.logf("serial %d: %s", rel.Serial, msg)
		if rerr := p.report(ctx, func(s *agentapi.PullStatus) { inRelease(s, agentapi.PullWaiting, msg) }); rerr != nil {
			return nil, rerr
		}
		if errors.Is(err, cache.ErrNotCached) {
			return &Result{Action: "waiting", Serial: rel.Serial}, nil
		}
		return nil, fmt.Errorf("fetching serial %d's closure: %w", rel.Serial, err)
	}
	a.logf("serial %d: closure of %s verified (%d paths) in %v", rel.Serial, rel.System, len(paths), time.Since(start).Round(time.Millisecond))
	p.setRoot(rel.System)

	// 7. Activate, as a push deploy does, with the health checks as the
	// confirmation.
	prevSerial, prevAccepted := st.Serial, st.Accepted
	st.Serial, st.Done, st.Accepted = rel.Serial, h, h
	st.Pending = &pending{Serial: rel.Serial, System: rel.System, Wave: rel.Wave, Since: a.now()}
	if err := p.report(ctx, func(s *agentapi.PullStatus) { inRelease(s, agentapi.PullActivating, "") }); err != nil {
		return nil, err
	}
	meta := map[string]string{"operator": rel.Publisher, "git_rev": rel.GitRev, "message": rel.Message,
		"channel": rel.Channel, "serial": strconv.FormatInt(rel.Serial, 10)}
	if meta["operator"] == "" {
		meta["operator"] = "pull"
	}
	if meta["message"] == "" {
		meta["message"] = fmt.Sprintf("channel %s serial %d", rel.Channel, rel.Serial)
	}
	a.logf("serial %d: activating %s", rel.Serial, rel.System)
	res, err := a.Activate(ctx, rel.System, meta)
	if ctx.Err() != nil {
		// Stopped: the activation goes on without us; the next poll
		// reports how it ended.
		return &Result{Action: "busy", Serial: rel.Serial}, nil
	}
	if err == nil && res.Outcome == agentapi.OutcomeLockHeld {
		msg := res.Message + "; trying again at the next poll"
		a.logf("serial %d: %s", rel.Serial, msg)
		st.Pending, st.Done, st.Accepted, st.Serial = nil, "", prevAccepted, prevSerial
		return &Result{Action: "busy", Serial: rel.Serial}, p.report(ctx, func(s *agentapi.PullStatus) { inRelease(s, agentapi.PullWaiting, msg) })
	}
	if err != nil {
		a.logf("serial %d: the activation: %v", rel.Serial, err)
		if lerr := p.l.CheckLock(); lerr != nil {
			// Its worker runs on: the next poll reports how it ends.
			return &Result{Action: "busy", Serial: rel.Serial}, nil
		}
		if err := p.resolvePending(ctx); err != nil {
			return nil, err
		}
		return &Result{Action: string(p.st.Status.Outcome), Serial: rel.Serial}, nil
	}
	outcome := agentapi.PullFailed
	switch res.Outcome {
	case agentapi.OutcomeDone:
		outcome = agentapi.PullDone
	case agentapi.OutcomeRolledBack:
		outcome = agentapi.PullRolledBack
	}
	check := res.Check
	if check == "" && outcome != agentapi.PullDone {
		check = failedCheck(res.Message)
	}
	a.logf("serial %d: %s: %s", rel.Serial, outcome, res.Message)
	st.Pending = nil
	return &Result{Action: string(outcome), Serial: rel.Serial}, p.report(ctx, func(s *agentapi.PullStatus) {
		inRelease(s, outcome, res.Message)
		s.Generation, s.Check = res.Generation, check
	})
}

// resolvePending reports how an activation that this agent no longer
// follows ended (killed poll, reboot), from the generations.
func (p *poll) resolvePending(ctx context.Context) error {
	pd := p.st.Pending
	gens, err := p.l.Generations()
	if err != nil {
		return err
	}
	var g *agentapi.Generation
	for _, x := range gens {
		if x.System == pd.System {
			g = x
		}
	}
	outcome, msg, gen, check := agentapi.PullFailed, "the activation was interrupted (a reboot or a crash) before it ended", 0, ""
	switch {
	case g != nil && !g.Confirmed.IsZero() && !g.Confirmed.Before(pd.Since) && !g.Failed:
		outcome, msg, gen = agentapi.PullDone, fmt.Sprintf("generation %d activated", g.Number), g.Number
	case g != nil && g.Failed && !g.FailedTime.Before(pd.Since):
		outcome, msg, gen, check = agentapi.PullRolledBack, g.FailedReason, g.Number, failedCheck(g.FailedReason)
	}
	p.a.logf("serial %d: %s: %s", pd.Serial, outcome, msg)
	p.st.Pending = nil
	return p.report(ctx, func(s *agentapi.PullStatus) {
		s.Serial, s.System, s.Wave, s.Outcome, s.Message, s.Generation, s.Check = pd.Serial, pd.System, pd.Wave, outcome, msg, gen, check
	})
}

var healthCheckRe = regexp.MustCompile(`health check "([^"]+)" failed`)

// failedCheck finds the failing health check's name in an activation's
// message (activation.HealthError's wording).
func failedCheck(msg string) string {
	if m := healthCheckRe.FindStringSubmatch(msg); m != nil {
		return m[1]
	}
	return ""
}

// refuseTooLarge reports a document refused unread for its size: no
// serial, no signature to check.
func (p *poll) refuseTooLarge(ctx context.Context, err error) *Result {
	p.a.logf("release refused: %v", err)
	if rerr := p.report(ctx, func(s *agentapi.PullStatus) {
		if s.Refused == nil || s.Refused.Serial != 0 || s.Refused.Reason != err.Error() {
			s.Refused = &agentapi.PullRefusal{Reason: err.Error(), Time: p.a.now()}
		}
	}); rerr != nil {
		p.a.logf("%v", rerr)
	}
	return &Result{Action: "refused"}
}

// getDocument reads a document of the channel, refusing one above the
// configuration's max_document_size whatever the source (an HTTP source
// cuts it off as it arrives).
func (a *Agent) getDocument(ctx context.Context, key, etag string) ([]byte, string, error) {
	data, newETag, err := a.Source.Get(ctx, key, etag)
	if max := a.Config.MaxDocumentSize; err == nil && max > 0 && int64(len(data)) > max {
		return nil, "", &limits.TooLargeError{Object: a.Source.String() + "/" + key, Limit: max, Got: int64(len(data)), Setting: "max_document_size in the pull block"}
	}
	return data, newETag, err
}

// publicRead reads a wave's report with the status credentials, or, where
// they may only write (credentials from before wave reports: s3:PutObject
// alone), from the channel as the host reads everything else.
type publicRead struct {
	channel.Store
	p *poll
}

// List lists with the status credentials; a store that cannot list is
// denied, as credentials without s3:ListBucket are.
func (r publicRead) List(ctx context.Context, prefix string, max int) ([]string, error) {
	if ls, ok := r.Store.(channel.Lister); ok {
		return ls.List(ctx, prefix, max)
	}
	return nil, fmt.Errorf("%s cannot list: %w", r.Store, channel.ErrDenied)
}

func (r publicRead) Read(ctx context.Context, key string) ([]byte, string, error) {
	data, etag, err := r.Store.Read(ctx, key)
	if errors.Is(err, channel.ErrDenied) {
		return r.p.waveReport(ctx, key, "")
	}
	return data, etag, err
}

// gatherWave returns the gate's Gather for rel: an earlier wave's entries
// gathered with the status credentials (nil without them).
func (p *poll) gatherWave(rel *agentapi.Release) func(ctx context.Context, wave, size int) error {
	store, ok := p.a.Status.(channel.Store)
	if !ok {
		return nil
	}
	return func(ctx context.Context, wave, size int) error {
		// Once in size polls of this host (size: its own wave's), so
		// that among the hosts that wait about one gathers per interval,
		// not each at each poll.
		if n := max(rel.WaveSize, 1); rand.IntN(n) != 0 {
			return nil
		}
		_, err := channel.GatherWave(ctx, publicRead{store, p}, &agentapi.Release{Channel: rel.Channel, Serial: rel.Serial, RootVersion: rel.RootVersion, Wave: wave, WaveSize: size})
		if err != nil {
			// Not a reason to stop the poll: the report may come anyway.
			p.a.logf("gathering wave %d's report: %v", wave, err)
		}
		return nil
	}
}

// waveReport reads an earlier wave's report, with its larger limit.
func (p *poll) waveReport(ctx context.Context, key, etag string) ([]byte, string, error) {
	return p.a.Source.GetLimit(ctx, key, etag, channel.WaveReportLimit(p.a.Config.MaxDocumentSize))
}

// statusOf reads a host's status document from the channel (nil when it
// has none); the gate verifies it.
func (p *poll) statusOf(ctx context.Context, host string) ([]byte, error) {
	if err := channel.CheckName("host", host); err != nil {
		return nil, err
	}
	data, _, err := p.a.getDocument(ctx, channel.StatusKey(host), "")
	var tl *limits.TooLargeError
	if errors.Is(err, fs.ErrNotExist) || errors.As(err, &tl) {
		// An oversized status is as good as no report.
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return data, nil
}

// RootName is the GC root (in the profiles directory) that keeps the
// channel's last fetched system, so that a gc between the fetch and the
// activation, or of a release that was rolled back, cannot take it.
func RootName(ch string) string { return "pull-" + ch }

func (p *poll) setRoot(system string) {
	link := filepath.Join(p.l.ProfilesDir(), RootName(p.a.Config.Channel))
	tmp := link + ".tmp"
	os.Remove(tmp)
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err == nil {
		if err = os.Symlink(system, tmp); err == nil {
			err = os.Rename(tmp, link)
		}
		if err != nil {
			p.a.logf("keeping %s from gc: %v", system, err)
		}
	}
}

// runLock takes the host's run lock for this pull (as a deploy run takes
// it over SSH), speaking the run lock's conversation over pipes, so that a
// push deploy and a pull never interleave. It returns a nil unlock and the
// holder when another run holds it.
func (p *poll) runLock(ctx context.Context, rel *agentapi.Release) (unlock func(), holder string, err error) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		// The lock is the process's: it goes when the process does, so no
		// heartbeat is needed (the lease only bounds a stuck poll).
		err := p.l.HoldRunLock(context.WithoutCancel(ctx), inR, outW, activation.RunLockOptions{Lease: 6 * time.Hour})
		inR.Close()
		outW.Close()
		done <- err
	}()
	go agentapi.WriteRunHolder(inW, &agentapi.RunHolder{Run: fmt.Sprintf("pull-%s-%d-%d", rel.Channel, rel.Serial, os.Getpid()),
		Operator: rel.Publisher, Machine: p.a.Config.Host, GitRev: rel.GitRev, Command: "pull", Hosts: []string{p.a.Config.Host}, Started: p.a.now()})
	reply, rerr := agentapi.ReadLockReply(bufio.NewReader(outR))
	release := func() error {
		fmt.Fprintln(inW, agentapi.LockRelease)
		inW.Close()
		return <-done
	}
	if rerr != nil {
		err := release()
		return nil, "", fmt.Errorf("run lock: no reply (%v, %v)", rerr, err)
	}
	if !reply.Locked {
		release()
		return nil, reply.Holder.String(), nil
	}
	if reply.TookOver != nil {
		p.a.logf("took over the run lock of %s", reply.TookOver.String())
	}
	return func() { release() }, "", nil
}

// runActivate runs the system's own agent: activate --confirm-timeout 0
// (the health checks decide), in this process's layout. Its log lines go to
// Logf; its result line is parsed.
func (a *Agent) runActivate(ctx context.Context, system string, meta map[string]string) (*agentapi.Result, error) {
	l := a.layout()
	store := closure.NewTargetStore(l.StateDir)
	exe := agentapi.SystemAgent(store.RealPath(system))
	kept := map[string]string{}
	for _, k := range []string{"operator", "git_rev", "message", "channel", "serial"} {
		if meta[k] != "" {
			kept[k] = meta[k]
		}
	}
	args := agentapi.ActivateCmd{StateDir: l.StateDir, RunDir: l.RunDir, ConfirmTimeout: 0, Meta: kept, System: system}.Args()
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	var stdout bytes.Buffer
	lw := &lineLogger{logf: a.logf}
	cmd.Stdout, cmd.Stderr = &stdout, lw
	runErr := cmd.Run()
	lw.flush()
	res, err := agentapi.ParseResult(stdout.Bytes())
	if err != nil {
		return nil, err
	}
	if res == nil {
		if runErr == nil {
			runErr = errors.New("no result line")
		}
		return nil, fmt.Errorf("%s activate: %w", exe, runErr)
	}
	return res, nil
}

// lineLogger passes each line written to it to logf.
type lineLogger struct {
	logf func(string, ...any)
	buf  []byte
}

func (w *lineLogger) Write(b []byte) (int, error) {
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		w.logf("%s", bytes.TrimPrefix(w.buf[:i], []byte("deploy-agent: ")))
		w.buf = w.buf[i+1:]
	}
}

func (w *lineLogger) flush() {
	if len(w.buf) > 0 {
		w.logf("%s", w.buf)
		w.buf = nil
	}
}
