package channel_test

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/internal/limits"
	"github.com/declarative/deploy/pull/channel"
)

// TestAppendReport has the hosts of a wave add their statuses to its
// report at once: conditional writes that lose are read again and retried,
// and no host's entry is lost.
func TestAppendReport(t *testing.T) {
	store := channel.DirStore(t.TempDir())
	ctx := context.Background()
	rel := release("web1", 7)
	rel.Wave = 2
	const hosts = 12
	var wg sync.WaitGroup
	for i := range hosts {
		wg.Go(func() {
			h := fmt.Sprintf("web%d", i)
			doc := fmt.Appendf(nil, `{"host":%q}`, h)
			// A host whose writes all lost tries again at its next poll.
			for {
				err := channel.AppendReport(ctx, store, rel, h, doc)
				if err == nil {
					return
				}
				if !errors.Is(err, channel.ErrConflict) {
					t.Errorf("%s: %v", h, err)
					return
				}
			}
		})
	}
	wg.Wait()
	data, etag, err := store.Read(ctx, channel.WaveReportKey(7, 0, 2))
	if err != nil {
		t.Fatal(err)
	}
	var wr agentapi.WaveReport
	if err := json.Unmarshal(data, &wr); err != nil || wr.Channel != "prod" || wr.Serial != 7 || wr.Wave != 2 || len(wr.Reports) != hosts {
		t.Fatalf("report %s (%v), want %d entries", data, err, hosts)
	}
	for h, doc := range wr.Reports {
		if string(doc) != fmt.Sprintf(`{"host":%q}`, h) {
			t.Errorf("entry of %s: %s", h, doc)
		}
	}
	// Adding what the report holds already writes nothing.
	if err := channel.AppendReport(ctx, store, rel, "web3", []byte(`{"host":"web3"}`)); err != nil {
		t.Fatal(err)
	}
	if _, again, _ := store.Read(ctx, channel.WaveReportKey(7, 0, 2)); again != etag {
		t.Error("an entry the report held was written again")
	}
	// A report about another release is replaced, not merged.
	other := release("web1", 6)
	other.Wave = 2
	store.Put(ctx, channel.WaveReportKey(6, 0, 2), data)
	if err := channel.AppendReport(ctx, store, other, "web1", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	data, _, _ = store.Read(ctx, channel.WaveReportKey(6, 0, 2))
	wr = agentapi.WaveReport{}
	if json.Unmarshal(data, &wr) != nil || wr.Serial != 6 || len(wr.Reports) != 1 {
		t.Errorf("serial 6's report: %s", data)
	}
	if k := channel.WaveReportKey(7, 3, 2); k != "status/waves/7-r3/2.json" {
		t.Errorf("WaveReportKey after a serial reset = %s", k)
	}
}

// waveFleet is a release of serial 9 to web-last, in wave 3 after wave 1
// (web0) and wave 2 (n hosts), with the hosts' keys.
type waveFleet struct {
	rel  *agentapi.Release
	keys map[string]ed25519.PrivateKey
	// objects is the channel's status prefix; gets and statuses count
	// the reads of wave reports and of hosts' status documents.
	objects        map[string][]byte
	gets, statuses int
	refuse         bool
	published, now time.Time
	// store, when set, holds the reports and entries instead, and the
	// gate may gather them; gathers counts its calls.
	store   channel.DirStore
	gathers int
}

func newWaveFleet(t *testing.T, n int) *waveFleet {
	f := &waveFleet{keys: map[string]ed25519.PrivateKey{}, objects: map[string][]byte{}, published: time.Unix(1e9, 0).UTC()}
	f.now = f.published.Add(time.Minute)
	f.rel = release("web-last", 9)
	f.rel.Wave, f.rel.Waves, f.rel.WaveSizes, f.rel.Deadline = 3, 3, []int{1, n}, f.published.Add(time.Hour)
	f.rel.AfterKeys = map[string]string{}
	for i := range n + 1 {
		h := fmt.Sprintf("web%d", i)
		k, line := hostKey(t)
		f.keys[h], f.rel.AfterKeys[h] = k, line
		f.rel.After = append(f.rel.After, h)
	}
	return f
}

func (f *waveFleet) status(t *testing.T, h string, o agentapi.PullOutcome) []byte {
	return signStatus(t, &agentapi.PullStatus{Host: h, Channel: "prod", Serial: 9, Outcome: o, Time: f.published.Add(time.Minute)}, f.keys[h])
}

// report puts the entries (host, document) into wave's report.
func (f *waveFleet) report(wave int, entries map[string][]byte) {
	wr := &agentapi.WaveReport{V: agentapi.Version, Channel: "prod", Serial: 9, Wave: wave, Reports: map[string]json.RawMessage{}}
	for h, doc := range entries {
		wr.Reports[h] = doc
	}
	f.objects[channel.WaveReportKey(9, 0, wave)], _ = json.Marshal(wr)
}

func (f *waveFleet) gate(c *channel.GateCache) (channel.Decision, string, error) {
	return channel.GateWaves(context.Background(), f.rel, f.now, c, channel.GateSource{
		Get: func(_ context.Context, key, etag string) ([]byte, string, error) {
			f.gets++
			if f.refuse {
				return nil, "", &limits.TooLargeError{Object: key, Limit: 16}
			}
			data, ok := f.objects[key]
			if f.store != "" {
				var err error
				if data, _, err = f.store.Read(context.Background(), key); err != nil {
					return nil, "", err
				}
				ok = true
			}
			if !ok {
				return nil, "", fmt.Errorf("%s: %w", key, fs.ErrNotExist)
			}
			tag := fmt.Sprintf(`"%x"`, sha256.Sum256(data))
			if tag == etag {
				return nil, "", channel.ErrNotModified
			}
			return data, tag, nil
		},
		Status: func(_ context.Context, h string) ([]byte, error) {
			f.statuses++
			return f.objects[channel.StatusKey(h)], nil
		},
		Gather: func(ctx context.Context, wave, size int) error {
			if f.store == "" {
				return nil
			}
			f.gathers++
			_, err := channel.GatherWave(ctx, f.store, &agentapi.Release{Channel: "prod", Serial: 9, Wave: wave, WaveSize: size})
			return err
		},
	})
}

// TestGateWaves follows a host of wave 3 through a rollout: it reads the
// report of the wave it waits for, one read per poll (conditional),
// whatever the wave's size, believes only entries signed by their hosts,
// and reads hosts' own statuses only past the deadline.
func TestGateWaves(t *testing.T) {
	for _, n := range []int{3, 30} {
		t.Run(fmt.Sprintf("%d hosts in wave 2", n), func(t *testing.T) {
			f := newWaveFleet(t, n)
			var c channel.GateCache
			poll := func(want channel.Decision, reason string, gets, statuses int) {
				t.Helper()
				f.gets, f.statuses = 0, 0
				got, why, err := f.gate(&c)
				if err != nil || got != want || !strings.Contains(why, reason) || f.gets != gets || f.statuses != statuses {
					t.Fatalf("GateWaves = %v %q %v after %d report and %d status reads, want %v containing %q after %d and %d",
						got, why, err, f.gets, f.statuses, want, reason, gets, statuses)
				}
			}
			// Nothing reported yet: one read of wave 1's report.
			poll(channel.Wait, "waiting for web0 (wave before 3)", 1, 0)
			poll(channel.Wait, "waiting for web0", 1, 0)
			// The canary reports; a forged entry for web1 is not believed.
			other, _ := hostKey(t)
			forged := signStatus(t, &agentapi.PullStatus{Host: "web1", Channel: "prod", Serial: 9, Outcome: agentapi.PullDone, Time: f.now}, other)
			f.report(1, map[string][]byte{"web0": f.status(t, "web0", agentapi.PullDone)})
			f.report(2, map[string][]byte{"web1": forged})
			poll(channel.Wait, "waiting for web1 (wave before 3) to report serial 9: status of web1 not signed by its host key", 2, 0)
			// Unchanged reports: a poll reads wave 2's again, and only it,
			// conditionally (the fake answers not modified).
			poll(channel.Wait, "status of web1 not signed", 1, 0)
			// Every host of wave 2 but the last reports.
			entries := map[string][]byte{}
			for i := 1; i < n; i++ {
				h := fmt.Sprintf("web%d", i)
				entries[h] = f.status(t, h, agentapi.PullDone)
			}
			f.report(2, entries)
			last := fmt.Sprintf("web%d", n)
			poll(channel.Wait, "waiting for "+last, 1, 0)
			// Its entry is withheld (or it crashed before adding it): its
			// own status document decides, but only past the deadline.
			f.objects[channel.StatusKey(last)] = f.status(t, last, agentapi.PullDone)
			poll(channel.Wait, "waiting for "+last, 1, 0)
			f.now = f.rel.Deadline.Add(time.Second)
			poll(channel.Go, "", 1, 1)
		})
	}
	t.Run("entries nobody gathered", func(t *testing.T) {
		// Wave 2's hosts all wrote their entries, but its gatherers are
		// down: a waiting host may gather them itself (Gather decides
		// how often), GatherAfter after it began to wait, not before.
		f := newWaveFleet(t, 3)
		f.store = channel.DirStore(t.TempDir())
		ctx := context.Background()
		for i := range 4 {
			h := fmt.Sprintf("web%d", i)
			wave := 2
			if i == 0 {
				wave = 1
			}
			f.store.Put(ctx, channel.WaveEntryKey(9, 0, wave, h), f.status(t, h, agentapi.PullDone))
		}
		var c channel.GateCache
		for _, after := range []time.Duration{0, time.Minute, channel.GatherAfter - time.Second} {
			f.now = f.published.Add(time.Minute + after)
			if got, why, err := f.gate(&c); got != channel.Wait || err != nil || !strings.Contains(why, "waiting for web0") {
				t.Fatalf("GateWaves %v after it began to wait = %v %q %v, want waiting for web0", after, got, why, err)
			}
		}
		if f.gathers != 0 {
			t.Fatalf("gathered %d times before GatherAfter", f.gathers)
		}
		// Wave 1 is gathered at its GatherAfter; wave 2 is waited for from
		// then, and gathered GatherAfter later.
		f.now = f.published.Add(time.Minute + channel.GatherAfter)
		if got, why, _ := f.gate(&c); got != channel.Wait || !strings.Contains(why, "waiting for web1") || f.gathers != 1 {
			t.Fatalf("GateWaves at GatherAfter = %v %q after %d gathers, want waiting for web1 after 1", got, why, f.gathers)
		}
		f.now = f.now.Add(time.Minute)
		if got, _, _ := f.gate(&c); got != channel.Wait || f.gathers != 1 {
			t.Fatalf("GateWaves before wave 2's GatherAfter = %v after %d gathers, want waiting after 1", got, f.gathers)
		}
		f.now = f.now.Add(channel.GatherAfter)
		if got, why, err := f.gate(&c); got != channel.Go || err != nil || f.gathers != 2 || f.statuses != 0 {
			t.Fatalf("GateWaves = %v %q %v after %d gathers and %d status reads, want go after 2 and 0", got, why, err, f.gathers, f.statuses)
		}
	})
	t.Run("a failed canary halts", func(t *testing.T) {
		f := newWaveFleet(t, 3)
		f.report(1, map[string][]byte{"web0": f.status(t, "web0", agentapi.PullRolledBack)})
		var c channel.GateCache
		if got, why, err := f.gate(&c); got != channel.Halt || !strings.Contains(why, "web0 (rolled-back") || err != nil || f.gets != 1 {
			t.Fatalf("GateWaves = %v %q %v after %d reads, want a halt after 1", got, why, err, f.gets)
		}
	})
	t.Run("a report too large", func(t *testing.T) {
		f := newWaveFleet(t, 3)
		f.refuse = true
		var c channel.GateCache
		if got, why, _ := f.gate(&c); got != channel.Wait || !strings.Contains(why, "wave 1's report refused") {
			t.Fatalf("GateWaves = %v %q, want waiting, saying the report was refused", got, why)
		}
	})
	t.Run("another release's cache", func(t *testing.T) {
		f := newWaveFleet(t, 3)
		c := channel.GateCache{Serial: 8, Reports: map[string]channel.Reported{"web0": {Outcome: agentapi.PullDone}}}
		if got, _, _ := f.gate(&c); got != channel.Wait || c.Serial != 9 || len(c.Reports) != 0 {
			t.Fatalf("GateWaves = %v with cache %+v, want waiting on serial 9's reports", got, c)
		}
	})
	t.Run("a release without wave sizes", func(t *testing.T) {
		// An older publisher: the hosts' status documents, one read each.
		f := newWaveFleet(t, 3)
		f.rel.WaveSizes = nil
		for _, h := range f.rel.After {
			f.objects[channel.StatusKey(h)] = f.status(t, h, agentapi.PullDone)
		}
		var c channel.GateCache
		if got, _, err := f.gate(&c); got != channel.Go || err != nil || f.gets != 0 || f.statuses != 4 {
			t.Fatalf("GateWaves = %v %v after %d report and %d status reads, want go after 0 and 4", got, err, f.gets, f.statuses)
		}
	})
}

// countingStore counts the writes of each key.
type countingStore struct {
	channel.DirStore
	mu     sync.Mutex
	writes map[string]int
}

func (c *countingStore) Write(ctx context.Context, key string, data []byte, cond channel.Cond) error {
	c.mu.Lock()
	c.writes[key]++
	c.mu.Unlock()
	return c.DirStore.Write(ctx, key, data, cond)
}

func (c *countingStore) Put(ctx context.Context, key string, data []byte) error {
	return c.Write(ctx, key, data, channel.Cond{})
}

// noList hides a store's List, as a store that cannot list does.
type noList struct{ channel.Store }

// deniedList is a store whose credentials may not list (no
// s3:ListBucket).
type deniedList struct{ channel.Store }

func (deniedList) List(context.Context, string, int) ([]string, error) {
	return nil, fmt.Errorf("LIST: 403: %w", channel.ErrDenied)
}

func readReport(t *testing.T, store channel.Store, serial int64, wave int) *agentapi.WaveReport {
	t.Helper()
	data, _, err := store.Read(context.Background(), channel.WaveReportKey(serial, 0, wave))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	wr := channel.DecodeWaveReport(data, "prod", serial, wave)
	if wr == nil {
		t.Fatalf("wave %d's report: %s", wave, data)
	}
	return wr
}

// TestAddToWave: each host writes its own entry; the report appears once,
// when a gatherer finds every entry of the wave, and not before. Hosts
// that append (an older agent, or credentials that cannot list) share a
// wave with those that write entries.
func TestAddToWave(t *testing.T) {
	ctx := context.Background()
	doc := func(h string) []byte { return fmt.Appendf(nil, `{"host":%q}`, h) }
	add := func(t *testing.T, store channel.Store, rel *agentapi.Release, h string, gatherer bool) bool {
		t.Helper()
		r := *rel
		r.Gatherer = gatherer
		done, err := channel.AddToWave(ctx, store, &r, h, doc(h))
		if err != nil {
			t.Fatal(err)
		}
		return done
	}
	t.Run("one by one", func(t *testing.T) {
		store := &countingStore{DirStore: channel.DirStore(t.TempDir()), writes: map[string]int{}}
		rel := release("web1", 7)
		rel.Wave, rel.WaveSize = 2, 5
		// web0, a gatherer, finishes first: the wave is not complete.
		if add(t, store, rel, "web0", true) {
			t.Fatal("a gatherer of an incomplete wave is done")
		}
		for i := 1; i < 5; i++ {
			h := fmt.Sprintf("web%d", i)
			if !add(t, store, rel, h, false) {
				t.Fatalf("%s, not a gatherer, is not done after its entry", h)
			}
			if n := store.writes[channel.WaveEntryKey(7, 0, 2, h)]; n != 1 {
				t.Errorf("%s's entry written %d times", h, n)
			}
			if wr := readReport(t, store, 7, 2); wr != nil {
				t.Fatalf("after %s: a report with %d entries, want none: only gatherers write it", h, len(wr.Reports))
			}
		}
		// web0's next poll gathers the complete wave.
		gather := *rel
		gather.Gatherer = true
		if done, err := channel.GatherWave(ctx, store, &gather); !done || err != nil {
			t.Fatalf("GatherWave of the complete wave = %v, %v", done, err)
		}
		wr := readReport(t, store, 7, 2)
		if wr == nil || len(wr.Reports) != 5 {
			t.Fatalf("the report after the gather: %+v, want 5 entries", wr)
		}
		for h, d := range wr.Reports {
			if string(d) != string(doc(h)) {
				t.Errorf("entry of %s: %s", h, d)
			}
		}
		// Again (another gatherer, or a retry): nothing to write.
		if done, err := channel.GatherWave(ctx, store, &gather); !done || err != nil {
			t.Fatalf("GatherWave again = %v, %v", done, err)
		}
		if n := store.writes[channel.WaveReportKey(7, 0, 2)]; n != 1 {
			t.Errorf("the report was written %d times, want once", n)
		}
	})
	t.Run("at once", func(t *testing.T) {
		store := channel.DirStore(t.TempDir())
		rel := release("web1", 7)
		rel.Wave, rel.WaveSize = 3, 16
		var wg sync.WaitGroup
		for i := range rel.WaveSize {
			wg.Go(func() {
				h := fmt.Sprintf("web%d", i)
				r := *rel
				r.Gatherer = i < channel.Gatherers
				done, err := channel.AddToWave(ctx, store, &r, h, doc(h))
				// A gatherer polls again until its wave is complete (all
				// the entries are in once wg is done).
				for err == nil && !done || errors.Is(err, channel.ErrConflict) {
					time.Sleep(time.Millisecond)
					done, err = channel.GatherWave(ctx, store, &r)
				}
				if err != nil {
					t.Errorf("%s: %v", h, err)
				}
			})
		}
		wg.Wait()
		if wr := readReport(t, store, 7, 3); wr == nil || len(wr.Reports) != rel.WaveSize {
			t.Fatalf("the report: %+v, want %d entries", wr, rel.WaveSize)
		}
	})
	t.Run("with appending hosts", func(t *testing.T) {
		store := channel.DirStore(t.TempDir())
		rel := release("web1", 7)
		rel.Wave, rel.WaveSize = 2, 3
		old := *rel
		old.WaveSize = 0 // an older publisher's release: every host appends
		if !add(t, store, &old, "a", false) {
			t.Fatal("a host that appends is not done")
		}
		if wr := readReport(t, store, 7, 2); wr == nil || len(wr.Reports) != 1 {
			t.Fatalf("after a host that appends: %+v, want its entry", wr)
		}
		if add(t, store, rel, "b", true) {
			t.Fatal("b, a gatherer of a wave of 3 with 2 reported, is done")
		}
		// Credentials that cannot list: this host appends.
		if !add(t, noList{store}, rel, "c", true) {
			t.Fatal("a host that cannot list is not done after it appended")
		}
		if wr := readReport(t, store, 7, 2); len(wr.Reports) != 2 {
			t.Fatalf("after a host that cannot list: %d entries, want 2", len(wr.Reports))
		}
		// b's next poll finds the wave complete and gathers it.
		if done, err := channel.GatherWave(ctx, store, rel); !done || err != nil {
			t.Fatalf("GatherWave = %v, %v", done, err)
		}
		if wr := readReport(t, store, 7, 2); len(wr.Reports) != 3 {
			t.Fatalf("after b's gather: %d entries, want 3", len(wr.Reports))
		}
		// A host that is no gatherer, whose credentials may not list,
		// appends too: the gatherers could not see its entry either.
		four := *rel
		four.Wave, four.WaveSize = 4, 5
		if !add(t, deniedList{store}, &four, "d", false) {
			t.Fatal("a host whose credentials may not list is not done after it appended")
		}
		if wr := readReport(t, store, 7, 4); wr == nil || len(wr.Reports) != 1 {
			t.Fatalf("after a host that may not list: %+v, want its entry in the report", wr)
		}
	})
}

// A wave report's entry is the final status cut to what the gate and
// publish --wait read, signed and verified as a status document; it is
// less than half the whole document's size, and a failure keeps its check
// and message.
func TestWaveEntry(t *testing.T) {
	key, pub := hostKey(t)
	now := time.Date(2026, 12, 7, 19, 28, 13, 123456789, time.UTC)
	sys := "/var/lib/deploy/store/jicpkgydkhj8b8klwgacwxfxwfml8f8n-system-web12"
	full := &agentapi.PullStatus{Host: "web12", Channel: "prod", Time: now, Agent: "0.9.0", Serial: 9, System: sys, Wave: 3,
		Outcome: agentapi.PullDone, Generation: 4, Message: "healthy", OutcomeTime: now, Current: 4, CurrentSystem: sys, Root: 2,
		Refused: &agentapi.PullRefusal{Serial: 8, Reason: "signed by a key the host does not trust", Time: now}}
	entry, err := channel.SignStatus(channel.WaveEntry(full), key)
	if err != nil {
		t.Fatal(err)
	}
	st, err := channel.VerifyStatus(entry, "prod", "web12", pub)
	if err != nil {
		t.Fatalf("the entry does not verify as web12's status: %v", err)
	}
	if st.Serial != 9 || st.Wave != 3 || st.Outcome != agentapi.PullDone || st.Generation != 4 || !st.Time.Equal(now.Truncate(time.Millisecond)) ||
		st.System != "" || st.CurrentSystem != "" || st.Agent != "" || st.Refused != nil || st.Message != "" {
		t.Errorf("entry %+v: want serial, wave, outcome, generation and its time only", st)
	}
	// Sizes compared without the refusal, which most statuses lack.
	plain := *full
	plain.Refused = nil
	whole, err := channel.SignStatus(&plain, key)
	if err != nil {
		t.Fatal(err)
	}
	if 2*len(entry) > len(whole)+len(whole)/10 {
		t.Errorf("entry %d bytes, the whole status %d: want about half or less", len(entry), len(whole))
	}
	t.Logf("entry %d bytes, whole status %d (without a refusal)", len(entry), len(whole))
	failed := *full
	failed.Outcome, failed.Check, failed.Message = agentapi.PullRolledBack, "app", "exit status 1"
	if e := channel.WaveEntry(&failed); e.Check != "app" || e.Message != "exit status 1" || e.Outcome != agentapi.PullRolledBack {
		t.Errorf("a rolled-back host's entry %+v lost its check or message", e)
	}
}
