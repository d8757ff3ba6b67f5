// Package limits bounds what deploy fetches and unpacks: how large a
// fetched object may be, how many bytes and entries an archive may unpack
// to, and how long a fetch may take as a whole.
//
// # Sizes
//
// A [Reader] passes through at most its limit and fails with a
// *[TooLargeError] as soon as one byte more arrives: an endless stream is cut
// off after limit+1 bytes, not read to its end.
//
// # Deadlines
//
// [Deadline] is the whole-object deadline of a fetch: a floor plus the time
// the object takes at a minimum rate. A server that sends a byte a minute,
// or stops, is cut off at the deadline, whatever connection or header
// timeouts say; the caller wraps what that costs in a *[DeadlineError].
//
// Each error names the object, the limit and the setting that raises it.
package limits

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// The defaults (documented in docs/pull.md and docs/configuration.md).
const (
	// DefaultDocument bounds a document: a release, a channel head, a
	// status, a narinfo.
	DefaultDocument = 1 << 20
	// DefaultNAR bounds one store path's NAR (and its compressed file).
	DefaultNAR = 8 << 30
	// DefaultTimeout is a document's whole deadline, and the floor of a
	// NAR's.
	DefaultTimeout = time.Minute
	// DefaultMinRate is the slowest average transfer rate, in bytes per
	// second, that a NAR's deadline allows for beyond the floor.
	DefaultMinRate = 64 << 10
	// DefaultUnpacked bounds the bytes of file contents an archive or an
	// image unpacks to, and the bytes of one download.
	DefaultUnpacked = 8 << 30
	// DefaultEntries bounds the entries an archive or an image unpacks to.
	DefaultEntries = 1_000_000
)

// TooLargeError is an object refused for its size.
type TooLargeError struct {
	// Object names what was refused ("release hosts/web1.json", "the NAR
	// of /nix/store/...").
	Object string
	// What is what was counted ("bytes", "entries"); "" is bytes.
	What string
	// Limit is the limit; Got is the size the object claimed, 0 when it
	// was cut off as it arrived.
	Limit, Got int64
	// Setting says how to raise the limit ("max_nar_size in the pull
	// block").
	Setting string
}

func (e *TooLargeError) Error() string {
	lim, got := Size(e.Limit), Size(e.Got)
	if e.What != "" && e.What != "bytes" {
		lim, got = fmt.Sprintf("%d %s", e.Limit, e.What), fmt.Sprintf("%d %s", e.Got, e.What)
	}
	msg := fmt.Sprintf("%s is larger than the limit of %s (cut off there)", e.Object, lim)
	if e.What != "" && e.What != "bytes" {
		msg = fmt.Sprintf("%s has more than the limit of %s", e.Object, lim)
	}
	if e.Got > 0 {
		msg = fmt.Sprintf("%s is %s, above the limit of %s", e.Object, got, lim)
	}
	if e.Setting != "" {
		msg += "; raise " + e.Setting
	}
	return msg
}

// DeadlineError is a fetch that did not finish within its deadline.
type DeadlineError struct {
	Object   string
	Deadline time.Duration
	// Read is how many bytes had arrived, -1 when unknown.
	Read    int64
	Setting string
}

func (e *DeadlineError) Error() string {
	msg := fmt.Sprintf("%s: not fetched within its deadline of %v", e.Object, e.Deadline.Round(time.Millisecond))
	if e.Read >= 0 {
		msg += fmt.Sprintf(" (%s arrived)", Size(e.Read))
	}
	if e.Setting != "" {
		msg += "; a slow or stalling server, or raise " + e.Setting
	}
	return msg
}

// Timeout reports that the fetch timed out.
func (e *DeadlineError) Timeout() bool { return true }

// Reader passes through at most Limit bytes of R; once one more byte
// arrives, Read fails with Err (a *[TooLargeError] if nil, naming Object and
// Setting).
type Reader struct {
	R       io.Reader
	Limit   int64
	Object  string
	Setting string
	// N counts the bytes passed through.
	N   int64
	err error
}

func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	// Read one byte beyond the limit at most: that byte is the evidence.
	if left := r.Limit + 1 - r.N; int64(len(p)) > left {
		p = p[:left]
	}
	n, err := r.R.Read(p)
	if r.N+int64(n) > r.Limit {
		n = int(r.Limit - r.N)
		r.N = r.Limit
		r.err = &TooLargeError{Object: r.Object, Limit: r.Limit, Setting: r.Setting}
		return n, r.err
	}
	r.N += int64(n)
	return n, err
}

// Deadline is the whole deadline of fetching an object of size bytes:
// timeout, plus size at minRate bytes per second (none when minRate or size
// is not positive).
func Deadline(timeout time.Duration, minRate, size int64) time.Duration {
	if minRate <= 0 || size <= 0 {
		return timeout
	}
	extra := time.Duration(float64(size) / float64(minRate) * float64(time.Second))
	if extra < 0 || timeout+extra < timeout {
		return time.Duration(1<<63 - 1)
	}
	return timeout + extra
}

// WithDeadline returns ctx bounded by d, and a function that tells whether
// an error is this deadline's (rather than ctx's own end).
func WithDeadline(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc, func(error) bool) {
	cause := errors.New("deadline")
	dctx, cancel := context.WithTimeoutCause(ctx, d, cause)
	hit := func(err error) bool {
		return err != nil && ctx.Err() == nil && errors.Is(context.Cause(dctx), cause)
	}
	return dctx, cancel, hit
}

// Size renders n bytes for people: "512 bytes", "64 KiB", "1.5 GiB".
func Size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d bytes", n)
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v, i := float64(n)/unit, 0
	for v >= unit && i < len(units)-1 {
		v /= unit
		i++
	}
	s := strconv.FormatFloat(v, 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	return s + " " + units[i]
}

// ParseSize reads a size: a number of bytes, optionally with a binary unit
// ("512", "64KiB", "1.5 GiB"; K, M, G and T are taken as KiB, MiB, GiB and
// TiB).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.TrimSpace(t[i:])
	}
	mult := map[string]float64{"": 1, "B": 1,
		"K": 1 << 10, "KiB": 1 << 10, "M": 1 << 20, "MiB": 1 << 20,
		"G": 1 << 30, "GiB": 1 << 30, "T": 1 << 40, "TiB": 1 << 40}[unit]
	v, err := strconv.ParseFloat(num, 64)
	if mult == 0 || err != nil || num == "" || v < 0 || v*mult >= 1<<62 {
		return 0, fmt.Errorf("size %q: want a number of bytes with an optional unit (KiB, MiB, GiB, TiB), such as \"64MiB\"", s)
	}
	return int64(v * mult), nil
}

// Err returns the error that cut the stream off, nil if none did.
func (r *Reader) Err() error { return r.err }
