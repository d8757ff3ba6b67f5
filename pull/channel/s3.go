package channel

import (
	"bufio"
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/internal/limits"
	"github.com/declarative/deploy/internal/sigv4"
)

// S3Writer writes a channel's documents into an S3-compatible bucket with
// requests signed by package sigv4: what a host needs to report its status,
// without an S3 SDK. The bucket is addressed path-style
// (ENDPOINT/BUCKET/KEY), as package s3cache does.
type S3Writer struct {
	// Endpoint is http(s)://HOST[:PORT].
	Endpoint string
	Bucket   string
	// Prefix is the channel's root in the bucket (no slashes around it).
	Prefix string
	Region string
	// Credentials returns the credentials at each write (a file that is
	// replaced is read again).
	Credentials func() (sigv4.Credentials, error)
	Client      *http.Client
	// ListPage is the most keys one LIST answer holds (S3's max-keys;
	// 0: the server's default, 1,000 on S3).
	ListPage int
}

// OpenWriter opens a channel's root for writing: s3://BUCKET/PREFIX with
// the query parameters endpoint (default https://s3.amazonaws.com) and
// region (default us-east-1), signed with the credentials in credFile
// ([ParseCredentials]); or file:///DIR.
func OpenWriter(rawURL, credFile string, client *http.Client) (Writer, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("channel URL %q: %w", rawURL, err)
	}
	switch u.Scheme {
	case "file":
		return DirStore(u.Path), nil
	case "s3":
	default:
		return nil, fmt.Errorf("channel URL %q: want s3:// or file:// to write to", rawURL)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("channel URL %q: no bucket", rawURL)
	}
	q := u.Query()
	endpoint := strings.TrimSuffix(q.Get("endpoint"), "/")
	if endpoint == "" {
		endpoint = "https://s3.amazonaws.com"
	}
	if eu, err := url.Parse(endpoint); err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
		return nil, fmt.Errorf("channel URL %q: endpoint %q: want http(s)://HOST[:PORT]", rawURL, endpoint)
	}
	region := q.Get("region")
	if region == "" {
		region = "us-east-1"
	}
	if credFile == "" {
		return nil, fmt.Errorf("channel URL %q: no credentials file to sign writes with", rawURL)
	}
	if client == nil {
		client = &http.Client{Timeout: time.Minute}
	}
	return &S3Writer{Endpoint: endpoint, Bucket: u.Host, Prefix: strings.Trim(u.Path, "/"), Region: region, Client: client,
		Credentials: func() (sigv4.Credentials, error) {
			data, err := os.ReadFile(credFile)
			if err != nil {
				return sigv4.Credentials{}, fmt.Errorf("status credentials: %w", err)
			}
			c, err := ParseCredentials(data)
			if err != nil {
				return sigv4.Credentials{}, fmt.Errorf("status credentials %q: %w", credFile, err)
			}
			return c, nil
		}}, nil
}

func (w *S3Writer) String() string {
	return "s3://" + w.Bucket + "/" + w.Prefix + " at " + w.Endpoint
}

// Put implements [Writer]: one signed PUT.
func (w *S3Writer) Put(ctx context.Context, key string, data []byte) error {
	return w.Write(ctx, key, data, Cond{})
}

// Write implements [Store]: a signed PUT with S3's conditional headers
// (If-Match, If-None-Match: *). A failed condition (412, or the 409 S3
// answers when conditional writes race) wraps [ErrConflict].
func (w *S3Writer) Write(ctx context.Context, key string, data []byte, cond Cond) error {
	hdr := http.Header{"Content-Type": {"application/json"}}
	if cond.IfMatch != "" {
		hdr.Set("If-Match", cond.IfMatch)
	}
	if cond.IfAbsent {
		hdr.Set("If-None-Match", "*")
	}
	resp, err := w.do(ctx, http.MethodPut, key, data, hdr)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	if resp.StatusCode == http.StatusPreconditionFailed || resp.StatusCode == http.StatusConflict {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return fmt.Errorf("%s: PUT %s: %s: %w", w, key, resp.Status, ErrConflict)
	}
	return w.failure(resp, "PUT", key, "s3:PutObject")
}

// Read implements [Store]: a signed GET, so that a host reads what it
// is about to change from the bucket itself, not through a cache in front
// of it. A missing object wraps fs.ErrNotExist; a document above
// [limits.DefaultDocument] × 16 is a *limits.TooLargeError.
func (w *S3Writer) Read(ctx context.Context, key string) ([]byte, string, error) {
	resp, err := w.do(ctx, http.MethodGet, key, nil, nil)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		data, err := io.ReadAll(&limits.Reader{R: resp.Body, Limit: WaveReportLimit(0), Object: w.String() + "/" + key})
		var tl *limits.TooLargeError
		if errors.As(err, &tl) {
			return nil, "", err
		}
		if err != nil {
			return nil, "", &cache.UnavailableError{Cache: w.String(), Err: err}
		}
		return data, resp.Header.Get("ETag"), nil
	case http.StatusNotFound:
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil, "", fmt.Errorf("%s/%s: %s: %w", w, key, resp.Status, fs.ErrNotExist)
	}
	return nil, "", w.failure(resp, "GET", key, "s3:GetObject")
}

// List implements [Lister]: ListObjectsV2 of the bucket under prefix, page
// by page (1,000 keys each), signed; it needs s3:ListBucket on the prefix
// (a 403 wraps [ErrDenied]).
func (w *S3Writer) List(ctx context.Context, prefix string, max int) ([]string, error) {
	full := prefix
	if w.Prefix != "" {
		full = w.Prefix + "/" + prefix
	}
	var keys []string
	token := ""
	for {
		q := url.Values{"list-type": {"2"}, "prefix": {full}}
		if token != "" {
			q.Set("continuation-token", token)
		}
		if page := w.ListPage; max > 0 && (page <= 0 || max-len(keys) < page) {
			q.Set("max-keys", strconv.Itoa(max-len(keys)))
		} else if page > 0 {
			q.Set("max-keys", strconv.Itoa(page))
		}
		resp, err := w.send(ctx, http.MethodGet, "/"+w.Bucket, q, nil, nil)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			err := w.failure(resp, "LIST", prefix, "s3:ListBucket")
			resp.Body.Close()
			return nil, err
		}
		var page struct {
			Contents []struct {
				Key string
			}
			IsTruncated           bool
			NextContinuationToken string
		}
		err = xml.NewDecoder(&limits.Reader{R: resp.Body, Limit: WaveReportLimit(0), Object: w.String() + "/" + prefix}).Decode(&page)
		resp.Body.Close()
		if err != nil {
			return nil, &cache.UnavailableError{Cache: w.String(), Err: fmt.Errorf("LIST %s: %w", prefix, err)}
		}
		for _, c := range page.Contents {
			if k, ok := strings.CutPrefix(c.Key, full); ok {
				keys = append(keys, prefix+k)
			}
		}
		if !page.IsTruncated || page.NextContinuationToken == "" || max > 0 && len(keys) >= max {
			return keys, nil
		}
		token = page.NextContinuationToken
	}
}

// do sends one request about key, signed with the current credentials.
func (w *S3Writer) do(ctx context.Context, method, key string, data []byte, hdr http.Header) (*http.Response, error) {
	p := "/" + w.Bucket + "/" + key
	if w.Prefix != "" {
		p = "/" + w.Bucket + "/" + w.Prefix + "/" + key
	}
	return w.send(ctx, method, p, nil, data, hdr)
}

// send sends one request to path (and query), signed with the current
// credentials.
func (w *S3Writer) send(ctx context.Context, method, p string, query url.Values, data []byte, hdr http.Header) (*http.Response, error) {
	creds, err := w.Credentials()
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, w.Endpoint, bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	req.URL.Path = p
	if query != nil {
		req.URL.RawQuery = query.Encode()
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	sigv4.Sign(req, creds, w.Region, "s3", sigv4.PayloadHash(data), time.Now())
	resp, err := w.Client.Do(req)
	if err != nil {
		return nil, &cache.UnavailableError{Cache: w.String(), Err: err}
	}
	return resp, nil
}

// failure is the error of an answer that is neither success nor a
// condition: a server error is a *cache.UnavailableError (tried again at
// the next poll); a 403 names the permission the credentials need.
func (w *S3Writer) failure(resp *http.Response, method, key, permission string) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	msg := fmt.Sprintf("%s %s: %s", method, key, resp.Status)
	if code := xmlElement(body, "Code"); code != "" {
		msg += fmt.Sprintf(" (%s: %s)", code, xmlElement(body, "Message"))
	}
	if resp.StatusCode >= 500 {
		return &cache.UnavailableError{Cache: w.String(), Err: errors.New(msg)}
	}
	if resp.StatusCode == http.StatusForbidden {
		msg += fmt.Sprintf(": the credentials may not do that (they should allow %s on the channel's status prefix)", permission)
		return fmt.Errorf("%s: %s: %w", w, msg, ErrDenied)
	}
	return fmt.Errorf("%s: %s", w, msg)
}

// ParseCredentials reads an access key pair from a credentials file: lines
// KEY=VALUE or KEY = VALUE, with the keys AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN (in any case: the lower-case
// names of ~/.aws/credentials work, its [section] lines are ignored, and so
// are comments). Errors never contain the file's content.
func ParseCredentials(data []byte) (sigv4.Credentials, error) {
	var c sigv4.Credentials
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		k = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(k), "export ")))
		v = strings.Trim(strings.TrimSpace(v), `"'`)
		switch k {
		case "aws_access_key_id":
			c.AccessKeyID = v
		case "aws_secret_access_key":
			c.SecretAccessKey = v
		case "aws_session_token":
			c.SessionToken = v
		}
	}
	if c.AccessKeyID == "" || c.SecretAccessKey == "" {
		return c, errors.New("want AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (KEY=VALUE lines)")
	}
	return c, nil
}

// xmlElement returns the text of the first <name> element of an S3 error
// document (no entities, no nesting: what S3 errors hold).
func xmlElement(doc []byte, name string) string {
	s := string(doc)
	i := strings.Index(s, "<"+name+">")
	if i < 0 {
		return ""
	}
	s = s[i+len(name)+2:]
	j := strings.Index(s, "</"+name+">")
	if j < 0 {
		return ""
	}
	return strings.TrimSpace(s[:j])
}
