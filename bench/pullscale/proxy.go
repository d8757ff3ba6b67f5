package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// proxy is a counting reverse proxy in front of MinIO: every request of
// the hosts and of the operator goes through it, counted by who made it
// (a host, by its source address, or the operator), method, answer class
// and key class, with the bytes of headers and bodies each way.
type proxy struct {
	rp       *httputil.ReverseProxy
	operator netip.Addr // requests from this address are the operator's
	prefix   string     // "/BUCKET/PREFIX/"

	mu     sync.Mutex
	counts map[key]*count
	// perHost counts each host's requests (by source address), so that a
	// poll's requests are its host's between its start and its end.
	perHost map[netip.Addr]*atomic.Int64
	// puts records when each status document was written, by key.
	puts map[string][]time.Time
}

type key struct {
	who    string // "hosts" or "operator"
	method string
	answer string // "2xx", "304", "404", "412", ...
	class  string
}

type count struct {
	n                 int64
	bytesIn, bytesOut int64 // request and response: headers + bodies, as the proxy sees them
}

func newProxy(target *url.URL, operator netip.Addr, prefix string, hosts []netip.Addr) *proxy {
	p := &proxy{operator: operator, prefix: prefix, counts: map[key]*count{}, perHost: map[netip.Addr]*atomic.Int64{},
		puts: map[string][]time.Time{}}
	for _, a := range hosts {
		p.perHost[a] = &atomic.Int64{}
	}
	p.rp = httputil.NewSingleHostReverseProxy(target)
	p.rp.Transport = &http.Transport{MaxIdleConns: 512, MaxIdleConnsPerHost: 512, IdleConnTimeout: time.Minute,
		DialContext: (&net.Dialer{Timeout: 10 * time.Second}).DialContext}
	// Hosts sign their status PUT for the Host they asked (SigV4): it is
	// passed on unchanged (NewSingleHostReverseProxy keeps req.Host).
	p.rp.ErrorLog = nil
	return p
}

// class is what a key of the bucket is (or, for a LIST, its prefix).
func (p *proxy) class(u *url.URL) string {
	k := strings.TrimPrefix(u.Path, p.prefix)
	if q := u.Query(); q.Get("list-type") != "" {
		if strings.Contains(q.Get("prefix"), "/status/waves/") {
			return "wave entries LIST"
		}
		return "other (listing, bucket)"
	}
	switch {
	case strings.HasPrefix(k, "channels/"):
		rest := k[strings.Index(k[len("channels/"):], "/")+len("channels/")+1:]
		switch {
		case rest == "channel.json":
			return "channel head"
		case strings.HasPrefix(rest, "timestamps/"):
			return "timestamp"
		case strings.HasPrefix(rest, "hosts/"):
			return "release hosts/*.json"
		case strings.HasPrefix(rest, "status/waves/") && strings.Count(rest, "/") > 3:
			return "wave entry waves/S/W/H.json"
		case strings.HasPrefix(rest, "status/waves/"):
			return "wave report status/waves/*"
		case strings.HasPrefix(rest, "status/"):
			return "status status/HOST.json"
		case strings.HasPrefix(rest, "releases/"):
			return "history releases/*"
		case strings.HasPrefix(rest, "root"):
			return "root"
		}
		return "channel other"
	case strings.HasSuffix(k, ".narinfo"):
		return "narinfo"
	case strings.HasPrefix(k, "nar/"):
		return "nar"
	case k == "nix-cache-info":
		return "nix-cache-info"
	}
	return "other (listing, bucket)"
}

type countingReader struct {
	io.ReadCloser
	n *int64
}

func (r countingReader) Read(b []byte) (int, error) {
	n, err := r.ReadCloser.Read(b)
	atomic.AddInt64(r.n, int64(n))
	return n, err
}

type countingWriter struct {
	http.ResponseWriter
	code int
	n    int64
}

func (w *countingWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

func headerBytes(h http.Header) int64 {
	n := int64(0)
	for k, vs := range h {
		for _, v := range vs {
			n += int64(len(k) + len(v) + 4)
		}
	}
	return n
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	src, _ := netip.ParseAddrPort(r.RemoteAddr)
	addr := src.Addr().Unmap()
	who := "hosts"
	if addr == p.operator || addr.IsLoopback() {
		who = "operator"
	} else if c := p.perHost[addr]; c != nil {
		c.Add(1)
	}
	var in int64
	if r.Body != nil {
		r.Body = countingReader{r.Body, &in}
	}
	cw := &countingWriter{ResponseWriter: w}
	p.rp.ServeHTTP(cw, r)
	answer := fmt.Sprintf("%d", cw.code)
	if cw.code >= 200 && cw.code < 300 {
		answer = "2xx"
	}
	class := p.class(r.URL)
	reqBytes := atomic.LoadInt64(&in) + headerBytes(r.Header) + int64(len(r.Method)+len(r.URL.RequestURI())+12)
	respBytes := cw.n + headerBytes(cw.Header()) + 17
	p.mu.Lock()
	k := key{who, r.Method, answer, class}
	c := p.counts[k]
	if c == nil {
		c = &count{}
		p.counts[k] = c
	}
	c.n++
	c.bytesIn += reqBytes
	c.bytesOut += respBytes
	if r.Method == http.MethodPut && class == "status status/HOST.json" && who == "hosts" {
		p.puts[r.URL.Path] = append(p.puts[r.URL.Path], time.Now())
	}
	p.mu.Unlock()
}

// snapshot is a copy of the counts.
type snapshot map[key]count

func (p *proxy) snapshot() snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := snapshot{}
	for k, c := range p.counts {
		s[k] = *c
	}
	return s
}

// hostRequests is how many requests the host at addr has made so far.
func (p *proxy) hostRequests(addr netip.Addr) int64 {
	if c := p.perHost[addr]; c != nil {
		return c.Load()
	}
	return 0
}

// statusPuts are the times the status document of host was written.
func (p *proxy) statusPuts(host string) []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]time.Time(nil), p.puts[p.prefix+"channels/prod/status/"+host+".json"]...)
}

// sub is s minus before.
func (s snapshot) sub(before snapshot) snapshot {
	d := snapshot{}
	for k, c := range s {
		b := before[k]
		if c.n-b.n == 0 {
			continue
		}
		d[k] = count{n: c.n - b.n, bytesIn: c.bytesIn - b.bytesIn, bytesOut: c.bytesOut - b.bytesOut}
	}
	return d
}

// total sums the counts of who (all when "") whose class passes keep (all
// when nil).
func (s snapshot) total(who string, keep func(key) bool) count {
	var t count
	for k, c := range s {
		if (who == "" || k.who == who) && (keep == nil || keep(k)) {
			t.n += c.n
			t.bytesIn += c.bytesIn
			t.bytesOut += c.bytesOut
		}
	}
	return t
}

// table renders s, one row per key, scaled by 1/per (per host, say).
func (s snapshot) table(per float64, unit string) string {
	keys := make([]key, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.who != b.who {
			return a.who < b.who
		}
		if a.class != b.class {
			return a.class < b.class
		}
		if a.method != b.method {
			return a.method < b.method
		}
		return a.answer < b.answer
	})
	var b strings.Builder
	fmt.Fprintf(&b, "    %-9s %-30s %-6s %-6s %12s %14s %14s %14s\n", "who", "key class", "method", "answer", "requests", "req/"+unit, "bytes in/"+unit, "bytes out/"+unit)
	for _, k := range keys {
		c := s[k]
		fmt.Fprintf(&b, "    %-9s %-30s %-6s %-6s %12d %14.2f %14.0f %14.0f\n", k.who, k.class, k.method, k.answer, c.n,
			float64(c.n)/per, float64(c.bytesIn)/per, float64(c.bytesOut)/per)
	}
	return b.String()
}
