package modules

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"github.com/declarative/deploy/agentapi"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/declarative/deploy/manifest"
	"github.com/hashicorp/hcl/v2"
)

// Config is the evaluated, merged configuration of one host.
type Config struct {
	// Host is the host's name.
	Host string
	// Arch is the target's GOARCH ("amd64").
	Arch string
	// SSHPort is the port the firewall keeps open for deploy (allow_ssh).
	SSHPort int
	// Resources are sorted by kind (in [Kinds] order), then name.
	Resources []*Resource
	// Packages maps each package's name to its store path.
	Packages map[string]string
	// Images describes the packages that are OCI images, by store path.
	Images map[string]*Image
	// Cache is the fleet's binary cache, nil without a cache block (a
	// pull block needs it).
	Cache *CacheRef
	// Notify are the fleet's notify blocks (a pull host posts its own
	// outcomes to them).
	Notify []agentapi.NotifyTarget
}

// Objects adds content to a store. The implementation finds the store paths
// that content refers to.
type Objects interface {
	// AddFile stores content as a regular file and returns its store path.
	AddFile(ctx context.Context, name string, content []byte, executable bool) (string, error)
}

// Realizer turns a host's configuration into a manifest, adding every file
// content, unit file, secret ciphertext and script to the store through
// Objects.
type Realizer struct {
	// FleetDir is the fleet directory that source attributes are relative
	// to.
	FleetDir string
	// StoreDir is the logical store directory.
	StoreDir string
	// Objects receives the content.
	Objects Objects
	// Revoked are the secret versions the fleet revoked
	// ([manifest.SecretVersion]): every manifest carries them, and a
	// secret whose ciphertext is one of them is an error.
	Revoked []string
}

// Realization is one call of [Realizer.Realize] in progress: the host's
// configuration, the manifest being filled and the diagnostics so far.
// Each kind's Realize function adds its resources through it.
type Realization struct {
	// Config is the host's configuration.
	Config *Config
	// Manifest is the manifest being filled.
	Manifest *manifest.Manifest

	ctx    context.Context
	z      *Realizer
	byKind map[string][]*Resource
	diags  hcl.Diagnostics
	units  []renderedUnit
}

// Resources returns the host's resources of the named kind, sorted by name.
func (c *Realization) Resources(kind string) []*Resource { return c.byKind[kind] }

// add stores content and returns its store path; a failure is reported at
// r's attribute attr.
func (c *Realization) add(r *Resource, name string, content []byte, exec bool, attr string) string {
	p, err := c.z.Objects.AddFile(c.ctx, name, content, exec)
	if err != nil {
		c.diags = append(c.diags, errAt(r.Range(attr), "Cannot store "+r.Kind.Name, "Storing %s failed: %s.", r.Key(), err))
	}
	return p
}

// read reads the fleet file that r's attribute attr names.
func (c *Realization) read(r *Resource, attr string) ([]byte, bool) {
	data, err := ReadFleetFile(c.z.FleetDir, r.String(attr, ""))
	if err != nil {
		c.diags = append(c.diags, errAt(r.Range(attr), "Cannot read "+attr, "%s: %s.", r.Key(), err))
		return nil, false
	}
	return data, true
}

// Realize returns the manifest of cfg, whose deploy-agent is the store path
// agent. Every kind realizes its resources in [Kinds] order.
func (z *Realizer) Realize(ctx context.Context, cfg *Config, agent string) (*manifest.Manifest, hcl.Diagnostics) {
	c := &Realization{
		Config: cfg,
		Manifest: &manifest.Manifest{SchemaVersion: manifest.SchemaVersion, Host: cfg.Host, StoreDir: z.StoreDir, Agent: agent,
			RevokedSecrets: slices.Clone(z.Revoked)},
		ctx:    ctx,
		z:      z,
		byKind: map[string][]*Resource{},
	}
	for _, r := range cfg.Resources {
		c.byKind[r.Kind.Name] = append(c.byKind[r.Kind.Name], r)
	}
	for _, k := range Kinds() {
		if k.Realize != nil {
			k.Realize(c, c.byKind[k.Name])
		}
	}
	c.Manifest.Sort()
	return c.Manifest, c.diags
}

func triggerHash(values []string) string {
	h := sha256.New()
	for _, v := range values {
		fmt.Fprintf(h, "%d:%s\n", len(v), v)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// StoreName turns s into a valid store path name: characters Nix does not
// allow become "_", leading periods are dropped, and an empty result is def.
func StoreName(s, def string) string {
	b := []byte(strings.TrimLeft(s, "."))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("+-._?=", c) >= 0) {
			b[i] = '_'
		}
	}
	if len(b) == 0 {
		return def
	}
	if len(b) > 180 {
		b = b[:180]
	}
	return string(b)
}

// ReadFleetFile reads the file rel of the fleet directory. rel must be
// relative and stay inside the directory after resolving symlinks.
func ReadFleetFile(fleetDir, rel string) ([]byte, error) {
	p, err := FleetPath(fleetDir, rel)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("reading %q: %w", rel, unwrapPath(err))
	}
	return data, nil
}

// FleetPath resolves rel inside fleetDir. It refuses absolute paths and
// paths that leave the directory, directly or through a symlink, because a
// build may read only the fleet's own files.
func FleetPath(fleetDir, rel string) (string, error) {
	if rel == "" {
		return "", fmt.Errorf("empty path")
	}
	if filepath.IsAbs(rel) {
		return "", fmt.Errorf("%q is absolute; paths are relative to the fleet directory, which a build may not leave", rel)
	}
	root, err := filepath.EvalSymlinks(fleetDir)
	if err != nil {
		return "", fmt.Errorf("fleet directory: %w", err)
	}
	joined := filepath.Join(root, rel)
	real, err := filepath.EvalSymlinks(joined)
	if err != nil {
		if !strings.HasPrefix(joined, root+string(filepath.Separator)) {
			return "", fmt.Errorf("%q is outside the fleet directory, which a build may not leave", rel)
		}
		return "", fmt.Errorf("%q: %w", rel, unwrapPath(err))
	}
	if real != root && !strings.HasPrefix(real, root+string(filepath.Separator)) {
		return "", fmt.Errorf("%q is outside the fleet directory, which a build may not leave", rel)
	}
	return real, nil
}

func unwrapPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}
