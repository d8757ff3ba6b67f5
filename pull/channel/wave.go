package channel

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/internal/limits"
)

// WaveReportKey is the [agentapi.WaveReport] of wave of the release with
// serial, signed under root version root: a serial reset (a new root)
// starts new reports.
func WaveReportKey(serial, root int64, wave int) string {
	return waveDir(serial, root) + strconv.Itoa(wave) + ".json"
}

// WaveEntryKey is host's entry in wave's report: its final status
// document, exactly as written to status/HOST.json, under the prefix
// that [WaveEntryPrefix] names; [AddToWave] gathers the entries into the
// report once the wave is complete.
func WaveEntryKey(serial, root int64, wave int, host string) string {
	return WaveEntryPrefix(serial, root, wave) + host + ".json"
}

// WaveEntryPrefix is the prefix of wave's entries ([WaveEntryKey]).
func WaveEntryPrefix(serial, root int64, wave int) string {
	return waveDir(serial, root) + strconv.Itoa(wave) + "/"
}

func waveDir(serial, root int64) string {
	s := strconv.FormatInt(serial, 10)
	if root > 0 {
		s += "-r" + strconv.FormatInt(root, 10)
	}
	return "status/waves/" + s + "/"
}

// WaveReportLimit bounds a wave report: 16 times the documents' limit
// (16 MiB by default), as it holds one status, about 1 KiB, per host of its
// wave.
func WaveReportLimit(maxDocument int64) int64 {
	if maxDocument <= 0 {
		maxDocument = limits.DefaultDocument
	}
	return 16 * maxDocument
}

// DecodeWaveReport returns the report in data when it is wave's report of
// serial in channel; nil when it is not one (malformed, or about another
// release), which is as good as no report.
func DecodeWaveReport(data []byte, channel string, serial int64, wave int) *agentapi.WaveReport {
	wr := &agentapi.WaveReport{}
	if data == nil || json.Unmarshal(data, wr) != nil || wr.Channel != channel || wr.Serial != serial || wr.Wave != wave {
		return nil
	}
	return wr
}

// WaveEntry is what a wave's report holds of a host's final status: what
// the wave gate and publish --wait read (serial, wave, outcome and when,
// the generation, and for an outcome other than done the failed check and
// the message). It is signed as a status document like the whole, so an
// agent of any version verifies it as one. The rest (the systems, the
// agent's version, a refusal, staleness) stays in status/HOST.json: every
// host of every later wave reads the report, so each byte of an entry is
// read once per later host, and the whole status is twice the size. Its
// time is when the outcome was reached, to the millisecond (readers take
// a status's time when it has no outcome_time).
func WaveEntry(st *agentapi.PullStatus) *agentapi.PullStatus {
	e := &agentapi.PullStatus{V: st.V, Host: st.Host, Channel: st.Channel, Time: outcomeTime(st).UTC().Truncate(time.Millisecond),
		Serial: st.Serial, Wave: st.Wave, Outcome: st.Outcome, Generation: st.Generation}
	if st.Outcome != agentapi.PullDone {
		e.Check, e.Message = st.Check, st.Message
	}
	return e
}

// AddToWave adds host's final status document (doc, exactly as written to
// its status/HOST.json) to its wave's report of rel, without a write
// that every host of the wave contends for:
//
//  1. it writes doc as its own entry ([WaveEntryKey]), which no other
//     host writes, and lists one key of the wave (may it list?): for
//     most hosts of a wave, that is all;
//  2. a gatherer (rel.Gatherer: the publisher names the first
//     [Gatherers] hosts of each wave) then lists the wave's entries (one
//     LIST, which S3 answers consistently after the writes) and reads the
//     report;
//  3. when the entries and the report's hosts together number the wave's
//     hosts (rel.WaveSize), it gathers them into the report, with a
//     conditional write.
//
// It returns whether the host is done with the report: false for a
// gatherer whose wave is not complete yet, which calls [GatherWave] again
// at its next polls until it is. So a wave of any size costs a PUT and a
// one-key LIST per host, and a LIST and a GET per gatherer and poll while
// the wave runs;
// the later waves read a report that exists once the wave is complete.
//
// A store that cannot list (credentials without s3:ListBucket on the
// prefix), or a release without WaveSize (an older publisher), gets the
// older way: [AppendReport], a read-modify-write of the report by every
// host. The report is the same either way, and hosts of both kinds may
// share a wave: entries and appended reports are merged.
func AddToWave(ctx context.Context, store Store, rel *agentapi.Release, host string, doc []byte) (bool, error) {
	ls, ok := store.(Lister)
	if !ok || rel.WaveSize <= 0 {
		return true, AppendReport(ctx, store, rel, host, doc)
	}
	if err := store.Put(ctx, WaveEntryKey(rel.Serial, rel.RootVersion, rel.Wave, host), doc); err != nil {
		return false, fmt.Errorf("writing the entry in wave %d's report: %w", rel.Wave, err)
	}
	if !rel.Gatherer {
		// The gatherers see this entry only if their credentials may
		// list, and so may this host's when the fleet's are alike: a
		// LIST of one key says so; credentials that may not (from before
		// wave entries) append, as the gatherers then do.
		_, err := ls.List(ctx, WaveEntryPrefix(rel.Serial, rel.RootVersion, rel.Wave), 1)
		if errors.Is(err, ErrDenied) {
			return true, AppendReport(ctx, store, rel, host, doc)
		}
		return err == nil, err
	}
	done, err := gather(ctx, store, ls, rel, host, doc)
	if errors.Is(err, ErrDenied) {
		return true, AppendReport(ctx, store, rel, host, doc)
	}
	return done, err
}

// Gatherers is how many hosts of each wave gather its report
// ([AddToWave]): more than one, so that one host down does not leave the
// wave without its report.
const Gatherers = 3

// GatherWave gathers the entries of rel's wave into its report when
// they make the whole wave (rel.WaveSize hosts), and reports whether the
// report is complete: what a gatherer does at each poll until it is, and
// what a host of a later wave does, now and then, when that report is
// still missing hosts long after it began to wait (the wave's gatherers
// are down). A store that cannot list does nothing.
func GatherWave(ctx context.Context, store Store, rel *agentapi.Release) (bool, error) {
	ls, ok := store.(Lister)
	if !ok || rel.WaveSize <= 0 {
		return true, nil
	}
	done, err := gather(ctx, store, ls, rel, "", nil)
	if errors.Is(err, ErrDenied) {
		return true, nil
	}
	return done, err
}

// gather is steps 2 and 3 of [AddToWave], for host (none: "") whose entry
// doc is written.
func gather(ctx context.Context, store Store, ls Lister, rel *agentapi.Release, host string, doc []byte) (bool, error) {
	prefix := WaveEntryPrefix(rel.Serial, rel.RootVersion, rel.Wave)
	keys, err := ls.List(ctx, prefix, 0)
	if err != nil {
		return false, fmt.Errorf("listing wave %d's entries: %w", rel.Wave, err)
	}
	var listed []string
	for _, k := range keys {
		h, ok := strings.CutSuffix(strings.TrimPrefix(k, prefix), ".json")
		if ok && CheckName("host", h) == nil {
			listed = append(listed, h)
		}
	}
	entries := map[string][]byte{}
	if host != "" {
		entries[host] = doc
	}
	key := WaveReportKey(rel.Serial, rel.RootVersion, rel.Wave)
	for attempt := 0; ; attempt++ {
		wr, cond, err := readToWrite(ctx, store, rel)
		if err != nil {
			return false, err
		}
		all := map[string]bool{}
		if host != "" {
			all[host] = true
		}
		for h := range wr.Reports {
			all[h] = true
		}
		for _, h := range listed {
			all[h] = true
		}
		if len(all) < rel.WaveSize {
			// Not complete: again at the next poll.
			return false, nil
		}
		changed := false
		for _, h := range listed {
			if _, ok := wr.Reports[h]; ok && h != host {
				continue
			}
			e, ok := entries[h]
			if !ok {
				e, _, err = store.Read(ctx, WaveEntryKey(rel.Serial, rel.RootVersion, rel.Wave, h))
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				if err != nil {
					return false, fmt.Errorf("reading %s's entry in wave %d's report: %w", h, rel.Wave, err)
				}
				entries[h] = e
			}
			if !bytes.Equal(wr.Reports[h], e) {
				wr.Reports[h], changed = e, true
			}
		}
		if !changed {
			return true, nil
		}
		out, err := json.Marshal(wr)
		if err != nil {
			return false, err
		}
		err = store.Write(ctx, key, out, cond)
		if !errors.Is(err, ErrConflict) {
			if err != nil {
				return false, fmt.Errorf("writing wave %d's report: %w", rel.Wave, err)
			}
			return true, nil
		}
		if attempt+1 == appendAttempts {
			return false, fmt.Errorf("writing wave %d's report: %d conditional writes lost to other hosts' (again at the next poll): %w", rel.Wave, appendAttempts, err)
		}
		// Another host gathered the wave too: read its report again
		// (its entries are kept).
		if err := pause(ctx, attempt); err != nil {
			return false, err
		}
	}
}

// readToWrite reads rel's wave report to change it: the report (a new,
// empty one when there is none, or the one there is is not one: malformed
// or about another release, its entries could not be believed anyway) and
// the condition of its write.
func readToWrite(ctx context.Context, store Store, rel *agentapi.Release) (*agentapi.WaveReport, Cond, error) {
	data, etag, err := store.Read(ctx, WaveReportKey(rel.Serial, rel.RootVersion, rel.Wave))
	cond := Cond{IfMatch: etag}
	if errors.Is(err, fs.ErrNotExist) {
		data, cond = nil, Cond{IfAbsent: true}
	} else if err != nil {
		return nil, cond, fmt.Errorf("reading wave %d's report: %w", rel.Wave, err)
	}
	wr := DecodeWaveReport(data, rel.Channel, rel.Serial, rel.Wave)
	if wr == nil {
		wr = &agentapi.WaveReport{Channel: rel.Channel, Serial: rel.Serial, Wave: rel.Wave}
	}
	if wr.Reports == nil {
		wr.Reports = map[string]json.RawMessage{}
	}
	wr.V = agentapi.Version
	return wr, cond, nil
}

// Lister is a [Store] that lists keys: the S3 bucket with s3:ListBucket on
// the channel's status prefix, or a directory.
type Lister interface {
	// List returns the keys under prefix (which ends in a slash), in
	// order: at most max of them (0: all).
	List(ctx context.Context, prefix string, max int) ([]string, error)
}

// pause waits before another conditional write, longer at each attempt
// and at random, so that the writers spread apart.
func pause(ctx context.Context, attempt int) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Duration(10+rand.IntN(40*(attempt+1))) * time.Millisecond):
		return nil
	}
}

// appendAttempts bounds the conditional writes of one [AppendReport]:
// past it, the host tries again at its next poll.
const appendAttempts = 8

// AppendReport adds host's final status document (doc, exactly as written
// to its status/HOST.json) to the report of its wave of rel with a
// conditional write, read again and retried when another host of the wave
// wrote in between. It is done when the report holds doc already. A report
// that is not one (malformed, or about another release) is replaced: its
// entries could not be believed anyway.
func AppendReport(ctx context.Context, store Store, rel *agentapi.Release, host string, doc []byte) error {
	key := WaveReportKey(rel.Serial, rel.RootVersion, rel.Wave)
	for attempt := 0; ; attempt++ {
		wr, cond, err := readToWrite(ctx, store, rel)
		if err != nil {
			return err
		}
		if bytes.Equal(wr.Reports[host], doc) {
			return nil
		}
		wr.Reports[host] = doc
		out, err := json.Marshal(wr)
		if err != nil {
			return err
		}
		err = store.Write(ctx, key, out, cond)
		if !errors.Is(err, ErrConflict) {
			if err != nil {
				return fmt.Errorf("writing wave %d's report: %w", rel.Wave, err)
			}
			return nil
		}
		if attempt+1 == appendAttempts {
			return fmt.Errorf("writing wave %d's report: %d conditional writes lost to other hosts' (again at the next poll): %w", rel.Wave, appendAttempts, err)
		}
		// Another host of the wave wrote first: read its version again
		// after a pause that spreads the writers apart.
		if err := pause(ctx, attempt); err != nil {
			return err
		}
	}
}

// Reported is what the gate keeps of an earlier host's verified final
// status for the release it gates.
type Reported struct {
	Outcome agentapi.PullOutcome `json:"outcome"`
	Check   string               `json:"check,omitempty"`
	// Message is the halt reason, for a halted host.
	Message string    `json:"message,omitempty"`
	Time    time.Time `json:"time"`
}

// GateCache is what a host keeps between polls while it waits for the
// earlier waves of one release: the verified final reports so far, and
// the ETag of each wave report read, so that a poll reads again only the
// report of the wave it waits for, conditionally (a 304 when nothing
// changed).
type GateCache struct {
	Serial  int64               `json:"serial"`
	Root    int64               `json:"root,omitempty"`
	ETags   map[int]string      `json:"etags,omitempty"`
	Reports map[string]Reported `json:"reports,omitempty"`
	// Why is the last reason an entry was not believed, by host.
	Why map[string]string `json:"why,omitempty"`
	// Since is, for each wave waited for, when the host began to wait
	// for it.
	Since map[int]time.Time `json:"since,omitempty"`
}

// GatherAfter is how long a host waits for an earlier wave's report to
// be complete before it may gather the wave's entries itself
// ([GatherWave], [GateSource].Gather).
const GatherAfter = 2 * time.Minute

// GateSource is what [GateWaves] reads: the channel, and the hosts' own
// status documents when a wave's report misses some at its deadline.
type GateSource struct {
	// Get reads a wave report (a [Source]'s GetLimit, with the limit of
	// [WaveReportLimit]).
	Get func(ctx context.Context, key, etag string) ([]byte, string, error)
	// Status reads a host's status document (nil, nil when none).
	Status func(ctx context.Context, host string) ([]byte, error)
	// Gather, when set, is called at each poll once the host has waited
	// GatherAfter for wave's report (of a wave of size hosts); it may
	// gather the wave's entries into it ([GatherWave]), or not: a few of
	// the waiting hosts should, not every one at every poll.
	Gather func(ctx context.Context, wave, size int) error
}

// GateWaves decides like [Gate], from the earlier waves' reports
// ([agentapi.WaveReport]): one conditional read per poll of the wave it
// waits for, whatever the fleet's size, instead of one read per earlier
// host. c carries what earlier polls verified (reset when rel is another
// release); the caller keeps it across polls. A release without
// WaveSizes (an older publisher) is gated by [Gate] on each host's status.
//
// The decision is [Gate]'s for the same statuses: an entry of a report is
// believed only as a status document would be. A host missing from its
// wave's report is waited for until the deadline; then its own status
// document is read (it may have reported without reaching the wave's
// report: a crash in between, or an entry withheld), and decides.
func GateWaves(ctx context.Context, rel *agentapi.Release, now time.Time, c *GateCache, src GateSource) (Decision, string, error) {
	if !hasWaveSizes(rel) {
		return Gate(ctx, rel, now, src.Status)
	}
	if c.Serial != rel.Serial || c.Root != rel.RootVersion || c.Reports == nil {
		*c = GateCache{Serial: rel.Serial, Root: rel.RootVersion, ETags: map[int]string{}, Reports: map[string]Reported{}, Why: map[string]string{}}
	}
	if c.ETags == nil {
		c.ETags = map[int]string{}
	}
	if c.Why == nil {
		c.Why = map[string]string{}
	}
	late := !rel.Deadline.IsZero() && now.After(rel.Deadline)
	off := 0
	for j := 1; j < rel.Wave; j++ {
		hosts := rel.After[off : off+rel.WaveSizes[j-1]]
		off += rel.WaveSizes[j-1]
		missing := c.missing(hosts)
		if len(missing) > 0 {
			if err := c.readReport(ctx, rel, j, missing, src); err != nil {
				return Wait, "", err
			}
			missing = c.missing(hosts)
		}
		if len(missing) > 0 && !late && src.Gather != nil {
			// The wave's report is not complete: past GatherAfter, the
			// waiting hosts may gather it (its gatherers are down). Gather
			// decides how often: each poll would be a LIST per waiting
			// host.
			if c.Since == nil {
				c.Since = map[int]time.Time{}
			}
			if since, ok := c.Since[j]; !ok {
				c.Since[j] = now
			} else if now.Sub(since) >= GatherAfter {
				if err := src.Gather(ctx, j, rel.WaveSizes[j-1]); err != nil {
					return Wait, "", err
				}
				if err := c.readReport(ctx, rel, j, missing, src); err != nil {
					return Wait, "", err
				}
				missing = c.missing(hosts)
			}
		}
		if len(missing) == 0 {
			if c.halts(rel, off) {
				// The waves so far stop the rollout: the later
				// ones need not be read.
				break
			}
			continue
		}
		if !late {
			// The gate waits for this wave: the later ones need not be
			// read yet.
			break
		}
		for _, h := range missing {
			data, err := src.Status(ctx, h)
			if err != nil {
				return Wait, "", err
			}
			if data != nil {
				c.believe(rel, h, data)
			}
		}
	}
	return decide(ctx, rel, now, func(_ context.Context, h string) (*agentapi.PullStatus, string, error) {
		r, ok := c.Reports[h]
		if !ok {
			return nil, c.Why[h], nil
		}
		return &agentapi.PullStatus{Host: h, Channel: rel.Channel, Serial: rel.Serial, Outcome: r.Outcome, Check: r.Check, Message: r.Message, OutcomeTime: r.Time}, "", nil
	})
}

// hasWaveSizes reports whether rel's WaveSizes partition its After.
func hasWaveSizes(rel *agentapi.Release) bool {
	if len(rel.WaveSizes) < rel.Wave-1 || rel.Wave < 2 {
		return false
	}
	n := 0
	for _, s := range rel.WaveSizes[:rel.Wave-1] {
		if s < 0 {
			return false
		}
		n += s
	}
	return n == len(rel.After)
}

// halts reports whether the first n hosts of rel.After, all reported,
// stop the rollout: one halted, or more failed than rel.MaxFailures.
func (c *GateCache) halts(rel *agentapi.Release, n int) bool {
	failed := 0
	for _, h := range rel.After[:n] {
		switch r := c.Reports[h]; {
		case !rel.Deadline.IsZero() && r.Time.After(rel.Deadline):
		case r.Outcome == agentapi.PullHalted:
			return true
		case r.Outcome != agentapi.PullDone:
			failed++
		}
	}
	return failed > rel.MaxFailures
}

func (c *GateCache) missing(hosts []string) []string {
	var m []string
	for _, h := range hosts {
		if _, ok := c.Reports[h]; !ok {
			m = append(m, h)
		}
	}
	return m
}

// readReport reads wave j's report (conditionally) and believes the
// entries of the missing hosts that verify. A report that is too large,
// malformed or about another release is as good as none.
func (c *GateCache) readReport(ctx context.Context, rel *agentapi.Release, j int, missing []string, src GateSource) error {
	data, etag, err := src.Get(ctx, WaveReportKey(rel.Serial, rel.RootVersion, j), c.ETags[j])
	var tl *limits.TooLargeError
	switch {
	case errors.Is(err, ErrNotModified), errors.Is(err, fs.ErrNotExist):
		return nil
	case errors.As(err, &tl):
		for _, h := range missing {
			c.Why[h] = fmt.Sprintf("wave %d's report refused: %v", j, err)
		}
		return nil
	case err != nil:
		return err
	}
	wr := DecodeWaveReport(data, rel.Channel, rel.Serial, j)
	if wr == nil {
		return nil
	}
	c.ETags[j] = etag
	for _, h := range missing {
		if doc, ok := wr.Reports[h]; ok {
			c.believe(rel, h, doc)
		}
	}
	return nil
}

// believe records h's status document when it verifies as a final report
// of rel's serial; otherwise it notes why not.
func (c *GateCache) believe(rel *agentapi.Release, h string, doc []byte) {
	st, err := VerifyStatus(doc, rel.Channel, h, rel.AfterKeys[h])
	if err != nil {
		c.Why[h] = err.Error()
		return
	}
	if st.Serial != rel.Serial || !st.Outcome.Final() {
		return
	}
	r := Reported{Outcome: st.Outcome, Check: st.Check, Time: outcomeTime(st)}
	if st.Outcome == agentapi.PullHalted {
		r.Message = st.Message
	}
	c.Reports[h] = r
	delete(c.Why, h)
}
