package limits

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func TestReader(t *testing.T) {
	for _, tt := range []struct {
		in      string
		limit   int64
		want    string
		tooLong bool
	}{
		{"", 4, "", false},
		{"abcd", 4, "abcd", false},
		{"abcde", 4, "abcd", true},
		{strings.Repeat("x", 1<<20), 10, "xxxxxxxxxx", true},
	} {
		r := &Reader{R: strings.NewReader(tt.in), Limit: tt.limit, Object: "doc", Setting: "max_document_size in the pull block"}
		got, err := io.ReadAll(r)
		var tl *TooLargeError
		if string(got) != tt.want || errors.As(err, &tl) != tt.tooLong {
			t.Errorf("ReadAll(%d bytes, limit %d) = %q, %v; want %q, too long %v", len(tt.in), tt.limit, got, err, tt.want, tt.tooLong)
		}
		if tt.tooLong && r.N != tt.limit {
			t.Errorf("N = %d, want %d", r.N, tt.limit)
		}
	}
	// An endless stream is cut off after limit+1 bytes.
	cr := &countingReader{}
	r := &Reader{R: cr, Limit: 1000}
	io.ReadAll(r)
	if cr.n > 1001 {
		t.Errorf("read %d bytes of an endless stream with limit 1000", cr.n)
	}
}

type countingReader struct{ n int64 }

func (c *countingReader) Read(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func TestParseSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"512", 512, true},
		{"64KiB", 64 << 10, true},
		{"1.5 GiB", 3 << 29, true},
		{"8G", 8 << 30, true},
		{"2TiB", 2 << 40, true},
		{"", 0, false},
		{"lots", 0, false},
		{"-1KiB", 0, false},
		{"1PB", 0, false},
	} {
		got, err := ParseSize(tt.in)
		if got != tt.want || (err == nil) != tt.ok {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestErrors(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{&TooLargeError{Object: "its NAR", Limit: 16 << 10, Got: 65 << 10, Setting: "max_nar_size in the pull block"},
			"its NAR is 65 KiB, above the limit of 16 KiB; raise max_nar_size in the pull block"},
		{&TooLargeError{Object: "doc", Limit: 1 << 20}, "doc is larger than the limit of 1 MiB (cut off there)"},
		{&TooLargeError{Object: "tool.tar", What: "entries", Limit: 100}, "tool.tar has more than the limit of 100 entries"},
		{&DeadlineError{Object: "hosts/web1.json", Deadline: time.Second, Read: 20, Setting: "fetch_timeout in the pull block"},
			"hosts/web1.json: not fetched within its deadline of 1s (20 bytes arrived); a slow or stalling server, or raise fetch_timeout in the pull block"},
	} {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}
