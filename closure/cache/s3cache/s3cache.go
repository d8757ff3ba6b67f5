// Package s3cache is a binary cache in an S3-compatible bucket (AWS S3,
// MinIO, Ceph RGW, Garage, R2), for the operator: it reads, writes and lists
// with github.com/minio/minio-go/v7. Hosts never link it; they fetch over
// plain HTTP(S) (package cache).
//
// # URLs
//
//	s3://BUCKET[/PREFIX][?endpoint=URL&region=REGION&profile=NAME]
//
// endpoint is the server (https://s3.amazonaws.com by default; its scheme
// decides TLS), region its region (us-east-1 by default), profile the
// ~/.aws/credentials profile. Credentials come from the usual AWS places,
// first found wins: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and
// AWS_SESSION_TOKEN); the shared credentials file (AWS_SHARED_CREDENTIALS_FILE,
// else ~/.aws/credentials) with AWS_PROFILE or the URL's profile; the
// instance's IAM role. Never from the fleet's files.
package s3cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"strings"

	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/internal/limits"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Bucket is a cache in an S3 bucket under a prefix.
type Bucket struct {
	client *minio.Client
	bucket string
	prefix string // "" or ending in "/"
	url    string // for messages
	// PartSize is the multipart upload's part size (default 64 MiB).
	PartSize uint64
}

// Open opens the cache an s3:// URL names (see the package doc).
func Open(rawURL string, getenv func(string) string) (*Bucket, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "s3" || u.Host == "" {
		return nil, fmt.Errorf("cache URL %q: want s3://BUCKET[/PREFIX][?endpoint=...&region=...]", rawURL)
	}
	q := u.Query()
	endpoint := q.Get("endpoint")
	if endpoint == "" {
		endpoint = "https://s3.amazonaws.com"
	}
	eu, err := url.Parse(endpoint)
	if err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
		return nil, fmt.Errorf("cache URL %q: endpoint %q: want http(s)://HOST[:PORT]", rawURL, endpoint)
	}
	region := q.Get("region")
	if region == "" {
		region = "us-east-1"
	}
	profile := q.Get("profile")
	if profile == "" {
		profile = getenv("AWS_PROFILE")
	}
	var creds *credentials.Credentials
	if id := getenv("AWS_ACCESS_KEY_ID"); id != "" {
		creds = credentials.NewStaticV4(id, getenv("AWS_SECRET_ACCESS_KEY"), getenv("AWS_SESSION_TOKEN"))
	} else {
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.FileAWSCredentials{Filename: getenv("AWS_SHARED_CREDENTIALS_FILE"), Profile: profile},
			&credentials.IAM{},
		})
	}
	client, err := minio.New(eu.Host, &minio.Options{Creds: creds, Secure: eu.Scheme == "https", Region: region, BucketLookup: minio.BucketLookupPath})
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", rawURL, err)
	}
	prefix := strings.Trim(u.Path, "/")
	if prefix != "" {
		prefix += "/"
	}
	shown := *u
	shown.User = nil
	return &Bucket{client: client, bucket: u.Host, prefix: prefix, url: shown.String()}, nil
}

func (b *Bucket) String() string { return b.url }

// Get implements [cache.Backend].
func (b *Bucket) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	obj, err := b.client.GetObject(ctx, b.bucket, b.prefix+key, minio.GetObjectOptions{})
	if err != nil {
		return nil, b.classify(key, err)
	}
	// GetObject is lazy: a missing key shows at the first read.
	if _, err := obj.Stat(); err != nil {
		obj.Close()
		return nil, b.classify(key, err)
	}
	return obj, nil
}

// Put implements [cache.Writer]: a multipart upload for large files.
func (b *Bucket) Put(ctx context.Context, key string, r io.Reader, size int64, contentType string) error {
	part := b.PartSize
	if part == 0 {
		part = 64 << 20
	}
	_, err := b.client.PutObject(ctx, b.bucket, b.prefix+key, r, size, minio.PutObjectOptions{ContentType: contentType, PartSize: part})
	if err != nil {
		return b.classify(key, err)
	}
	return nil
}

// List implements [cache.Writer]: the narinfo keys under the prefix, in
// one listing (paged by the server, 1,000 keys a page).
func (b *Bucket) List(ctx context.Context) (map[string]bool, error) {
	out := map[string]bool{}
	for obj := range b.client.ListObjects(ctx, b.bucket, minio.ListObjectsOptions{Prefix: b.prefix, Recursive: false}) {
		if obj.Err != nil {
			return nil, b.classify("", obj.Err)
		}
		key := strings.TrimPrefix(obj.Key, b.prefix)
		if strings.HasSuffix(key, ".narinfo") {
			out[key] = true
		}
	}
	return out, nil
}

// classify maps an S3 error: a missing key or bucket is fs.ErrNotExist,
// denied access and the server's own errors are what they are, anything
// else (the network) makes the cache unavailable.
func (b *Bucket) classify(key string, err error) error {
	resp := minio.ToErrorResponse(err)
	switch resp.Code {
	case "NoSuchKey":
		return fmt.Errorf("%s/%s: %w", b.url, key, fs.ErrNotExist)
	case "NoSuchBucket":
		return fmt.Errorf("cache %s: bucket %q does not exist: %w", b.url, b.bucket, fs.ErrNotExist)
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch":
		return fmt.Errorf("cache %s: %s: %s (check the credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, AWS_PROFILE)", b.url, resp.Code, resp.Message)
	case "":
		var ue *cache.UnavailableError
		if errors.As(err, &ue) {
			return err
		}
		return &cache.UnavailableError{Cache: b.url, Err: err}
	}
	return fmt.Errorf("cache %s: %s: %s", b.url, resp.Code, resp.Message)
}

// ErrPreconditionFailed is a conditional write whose condition did not
// hold: the object changed, or exists, meanwhile.
var ErrPreconditionFailed = errors.New("precondition failed")

// ReadObject returns the small object at key and its ETag. A missing key
// wraps fs.ErrNotExist; an object above 16 MiB is a *limits.TooLargeError,
// cut off there.
func (b *Bucket) ReadObject(ctx context.Context, key string) ([]byte, string, error) {
	obj, err := b.client.GetObject(ctx, b.bucket, b.prefix+key, minio.GetObjectOptions{})
	if err != nil {
		return nil, "", b.classify(key, err)
	}
	defer obj.Close()
	// Read, then Stat: the GET's answer carries the ETag. Stat first
	// would be a HEAD of its own before the GET (two requests per read).
	data, err := io.ReadAll(&limits.Reader{R: obj, Limit: 16 << 20, Object: b.url + "/" + key})
	var tl *limits.TooLargeError
	if errors.As(err, &tl) {
		return nil, "", err
	}
	if err != nil {
		return nil, "", b.classify(key, err)
	}
	info, err := obj.Stat()
	if err != nil {
		return nil, "", b.classify(key, err)
	}
	return data, info.ETag, nil
}

// WriteObject stores data at key, only if the object's ETag is ifMatch
// (when not empty), or only if there is none (ifAbsent): S3's conditional
// writes (If-Match, If-None-Match: *). A failed condition wraps
// [ErrPreconditionFailed].
func (b *Bucket) WriteObject(ctx context.Context, key string, data []byte, contentType, ifMatch string, ifAbsent bool) error {
	opts := minio.PutObjectOptions{ContentType: contentType}
	if ifMatch != "" {
		opts.SetMatchETag(strings.Trim(ifMatch, `"`))
	}
	if ifAbsent {
		opts.SetMatchETagExcept("*")
	}
	_, err := b.client.PutObject(ctx, b.bucket, b.prefix+key, bytes.NewReader(data), int64(len(data)), opts)
	if err != nil {
		if resp := minio.ToErrorResponse(err); resp.Code == "PreconditionFailed" || resp.StatusCode == 412 {
			return fmt.Errorf("%s/%s: %w", b.url, key, ErrPreconditionFailed)
		}
		return b.classify(key, err)
	}
	return nil
}
