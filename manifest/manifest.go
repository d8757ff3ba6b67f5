// Package manifest defines manifest.json, the desired state of one host as
// primitives: the contract between the builder, which writes it into every
// system closure, and the activation agent, which applies it.
//
// # Schema
//
// A [Manifest] lists packages, groups, users, directories, files, symlinks,
// secrets, sysctls, a firewall ruleset, systemd units, activation scripts and
// health checks, plus the hostname and time zone. Everything the agent needs
// is either inline (names, owners, modes) or a store path in the same closure
// (file contents, unit files, secret ciphertexts, scripts). docs/manifest.md
// documents every field and the order in which the agent applies them.
//
// # Versioning
//
// The schema is versioned by [Manifest.SchemaVersion]. Adding an optional
// field keeps the version; changing or removing a field, or changing what a
// field means, increments it. [Parse] rejects a manifest whose version it does
// not know and any field it does not know, so an old agent never half-applies
// a newer manifest.
//
// # Canonical form
//
// [Manifest.Marshal] writes a canonical encoding: every list sorted by its
// key, no duplicate keys, two-space indentation and a final newline. The same
// desired state therefore always gives the same bytes, which is what makes a
// system path reproducible.
//
// # Diff
//
// [Diff] compares two manifests and reports what activating the second after
// the first changes: files, units to stop, start, restart and reload,
// packages, secrets and the rest. deploy diff prints it; the agent makes the
// same decisions for units.
package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
)

// SchemaVersion is the version of the manifest schema this package writes and
// the only one it reads.
const SchemaVersion = 1

// FileName is the name of the manifest inside a system path.
const FileName = "manifest.json"

// Manifest is the desired state of one host.
type Manifest struct {
	// SchemaVersion is always [SchemaVersion].
	SchemaVersion int `json:"schema_version"`
	// Host is the host's name in the fleet configuration.
	Host string `json:"host"`
	// StoreDir is the logical store directory every store path below is in.
	StoreDir string `json:"store_dir"`
	// Agent is the store path of the deploy-agent that activates this
	// manifest; the executable is Agent + "/bin/deploy-agent".
	Agent string `json:"agent"`
	// Hostname is the static host name to set; empty leaves it alone.
	Hostname string `json:"hostname,omitempty"`
	// Timezone is an IANA zone name such as "Europe/Berlin"; empty leaves
	// it alone.
	Timezone string `json:"timezone,omitempty"`
	// SecretsAllowTmpfs lets the agent decrypt secrets into a tmpfs (whose
	// pages can be swapped to disk) when it cannot mount a ramfs; without
	// it such an activation fails.
	SecretsAllowTmpfs bool `json:"secrets_allow_tmpfs,omitempty"`

	Packages          []Package          `json:"packages"`
	Groups            []Group            `json:"groups"`
	Users             []User             `json:"users"`
	Directories       []Directory        `json:"directories"`
	Files             []File             `json:"files"`
	Symlinks          []Symlink          `json:"symlinks"`
	Secrets           []Secret           `json:"secrets"`
	Sysctls           []Sysctl           `json:"sysctls"`
	Firewall          *Firewall          `json:"firewall,omitempty"`
	Units             []Unit             `json:"units"`
	ActivationScripts []ActivationScript `json:"activation_scripts"`
	HealthChecks      []HealthCheck      `json:"health_checks"`
	// MetricGates are the health checks of type prometheus, judged after
	// HealthChecks passed: on the host (RunOn host) by the agent, on the
	// operator (RunOn operator) by deploy before it confirms. They are a
	// field of their own so that an older agent, which reads the manifests
	// of systems the machine ran leniently, ignores them rather than
	// refusing an unknown check type.
	MetricGates []MetricGate `json:"metric_gates,omitempty"`

	// Images are the OCI images whose roots the agent realizes on the
	// host before anything else changes (units' RootDirectory= names
	// them); added after version 1 as an optional field.
	Images []Image `json:"images,omitempty"`

	// RevokedSecrets are the secret versions the fleet revoked (each a
	// [SecretVersion]), sorted: the agent adds them to the host's record
	// of revoked versions, which only grows, and never installs a secret
	// whose ciphertext is in that record, whatever generation it
	// activates (a rollback included).
	RevokedSecrets []string `json:"revoked_secrets,omitempty"`
}

// SecretVersion names one version of a secret: "sha256:" and the hex
// SHA-256 of its ciphertext (the .age file's bytes).
func SecretVersion(ciphertext []byte) string {
	sum := sha256.Sum256(ciphertext)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ValidSecretVersion reports whether v is a [SecretVersion]: "sha256:"
// and 64 lowercase hex digits.
func ValidSecretVersion(v string) bool {
	h, ok := strings.CutPrefix(v, "sha256:")
	if !ok || len(h) != 64 {
		return false
	}
	for _, c := range h {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Image is an OCI image a service runs in. Its store path holds
// manifest.json, config.json and layers (a line "DIGEST LAYERPATH" per
// layer, bottom first); the agent realizes its root at
// STATE/images/HEX/rootfs, HEX the digest's hex digits.
type Image struct {
	// Digest is the image manifest's digest ("sha256:" and 64 hex digits).
	Digest string `json:"digest"`
	// Path is the image's store path.
	Path string `json:"path"`
	// User is the image's own user, when a service runs as it: the
	// agent makes sure the host resolves its IDs (systemd refuses a
	// numeric User= the host does not know), adding a locked system
	// account when it has none.
	User *ImageUser `json:"user,omitempty"`
}

// ImageUser is the user an image's configuration names, resolved in the
// image's /etc/passwd and /etc/group.
type ImageUser struct {
	// Name is the image's name for the user ("" when it has none).
	Name string `json:"name,omitempty"`
	UID  int    `json:"uid"`
	GID  int    `json:"gid"`
}

// Package is a package of the closure. The agent installs nothing for it:
// files and units refer to its store path. It is listed for diffs and SBOMs.
type Package struct {
	Name string `json:"name"`
	Path string `json:"path"`
}

// Group is a Unix group the agent creates (or updates) and, when a later
// generation no longer lists it, removes if the agent created it.
type Group struct {
	Name string `json:"name"`
	// GID is the fixed group ID, or nil to let the system allocate one.
	GID *int `json:"gid,omitempty"`
	// System allocates from the system range.
	System bool `json:"system,omitempty"`
	// Members are extra members (supplementary), sorted.
	Members []string `json:"members,omitempty"`
}

// User is a Unix user account.
type User struct {
	Name string `json:"name"`
	// UID is the fixed user ID, or nil to let the system allocate one.
	UID *int `json:"uid,omitempty"`
	// System allocates from the system range and, unless Shell is set,
	// gives no login shell.
	System bool `json:"system,omitempty"`
	// Group is the primary group. When it is the user's own name the
	// builder also lists it in Groups; any other primary group must exist
	// on the host or be declared.
	Group string `json:"group"`
	// Groups are supplementary groups, sorted.
	Groups      []string `json:"groups,omitempty"`
	Description string   `json:"description,omitempty"`
	Home        string   `json:"home"`
	CreateHome  bool     `json:"create_home,omitempty"`
	Shell       string   `json:"shell"`
	// AuthorizedKeys are the exact lines of the user's authorized_keys,
	// in configuration order; nil leaves the file alone, an empty list
	// empties it.
	AuthorizedKeys []string `json:"authorized_keys,omitempty"`
}

// Directory is a directory the agent creates with the given owner and mode.
type Directory struct {
	Path  string `json:"path"`
	Owner string `json:"owner"`
	Group string `json:"group"`
	// Mode is four octal digits, e.g. "0755".
	Mode string `json:"mode"`
}

// File is a regular file whose content is the store path Source (itself a
// regular file). The agent writes it atomically (temp file with owner and
// mode, then rename). Force allows replacing a file that no generation
// managed before.
type File struct {
	Path   string `json:"path"`
	Source string `json:"source"`
	Owner  string `json:"owner"`
	Group  string `json:"group"`
	Mode   string `json:"mode"`
	Force  bool   `json:"force,omitempty"`
}

// Symlink is a symbolic link at Path pointing to Target.
type Symlink struct {
	Path   string `json:"path"`
	Target string `json:"target"`
	Force  bool   `json:"force,omitempty"`
}

// Secret is an age-encrypted file. Source is the ciphertext's store path;
// the agent decrypts it with the host key to Path (normally under
// /run/deploy/secrets), created with Owner, Group and Mode before the first
// byte is written. Units lists the units to restart when the ciphertext
// changes.
type Secret struct {
	Name   string   `json:"name"`
	Source string   `json:"source"`
	Path   string   `json:"path"`
	Owner  string   `json:"owner"`
	Group  string   `json:"group"`
	Mode   string   `json:"mode"`
	Units  []string `json:"units,omitempty"`
}

// Sysctl is a kernel parameter, Key in dotted form ("net.ipv4.ip_forward").
type Sysctl struct {
	Key   string `json:"key"`
	Value string `json:"value"`
	// Boot sets it only at boot (parameters the kernel takes once): an
	// activation leaves it, and the host reports that it needs a reboot
	// while its value differs.
	Boot bool `json:"boot,omitempty"`
}

// Firewall is an nftables ruleset; the agent loads it with `nft -f Ruleset`
// (the ruleset starts by flushing the tables it owns).
type Firewall struct {
	// Ruleset is the store path of the ruleset file.
	Ruleset string `json:"ruleset"`
	// Table is the nftables table the ruleset owns ("inet deploy").
	Table string `json:"table"`
}

// Unit is a systemd unit file installed into /etc/systemd/system.
//
// The agent decides what to do with a unit by comparing two generations:
// a unit only in the new one is started (if Start), a unit only in the old
// one is stopped, a unit whose RestartHash changed is restarted, and a unit
// whose ReloadHash alone changed is reloaded.
type Unit struct {
	// Name is the unit's file name, e.g. "hello.service".
	Name string `json:"name"`
	// Source is the store path of the unit file.
	Source string `json:"source"`
	// WantedBy are the targets that want the unit ("multi-user.target");
	// the agent links it into their .wants directories.
	WantedBy []string `json:"wanted_by,omitempty"`
	// Start tells the agent to start the unit on activation. Units
	// activated by something else (a timer's service) have it false.
	Start bool `json:"start"`
	// RestartHash is the hex SHA-256 of the unit file and its restart
	// triggers.
	RestartHash string `json:"restart_hash"`
	// ReloadHash is the hex SHA-256 of the unit's reload triggers, empty
	// when it has none.
	ReloadHash string `json:"reload_hash,omitempty"`
}

// ActivationScript is an executable (a store path) the agent runs after the
// units are in place, in Name order (After entries first).
type ActivationScript struct {
	Name   string   `json:"name"`
	Source string   `json:"source"`
	After  []string `json:"after,omitempty"`
}

// Health check types.
const (
	CheckHTTP       = "http"
	CheckTCP        = "tcp"
	CheckCommand    = "command"
	CheckUnitActive = "unit_active"
	// CheckPrometheus is a metric gate: it is realized as a [MetricGate],
	// never as a HealthCheck.
	CheckPrometheus = "prometheus"
)

// HealthCheck is a check the agent runs after activation. The activation
// succeeds when every check passes within its TimeoutMS, retrying every
// IntervalMS.
type HealthCheck struct {
	Name string `json:"name"`
	// Type is one of http, tcp, command, unit_active.
	Type string `json:"type"`
	// URL (http): the URL to GET; ExpectStatus is the status to expect
	// (default 200).
	URL          string `json:"url,omitempty"`
	ExpectStatus int    `json:"expect_status,omitempty"`
	// Address (tcp): host:port to connect to.
	Address string `json:"address,omitempty"`
	// Command (command): argv to run; exit status 0 passes.
	Command []string `json:"command,omitempty"`
	// Unit (unit_active): the unit that must be active.
	Unit       string `json:"unit,omitempty"`
	TimeoutMS  int64  `json:"timeout_ms"`
	IntervalMS int64  `json:"interval_ms"`
	// AttemptTimeoutMS bounds one attempt (0: max(IntervalMS, 5 s), at
	// most TimeoutMS); it is at most TimeoutMS.
	AttemptTimeoutMS int64 `json:"attempt_timeout_ms,omitempty"`
}

// Where a [MetricGate] is evaluated.
const (
	GateOnHost     = "host"     // by the agent, after the host's health checks
	GateOnOperator = "operator" // by deploy, before it confirms
)

// MetricGate is a health check of type prometheus: an instant query
// evaluated every IntervalMS for WindowMS against a Prometheus server. The
// gate passes when at least MinSamples evaluations returned a value and
// every value met the thresholds (Min <= value <= Max, each when set). A
// value out of bounds fails it at once; an evaluation that returns nothing
// (an empty result, NaN) or fails (Prometheus unreachable within
// QueryTimeoutMS, an error answer) counts as no sample, and the gate fails
// as soon as MinSamples can no longer be reached.
type MetricGate struct {
	Name string `json:"name"`
	// RunOn is GateOnHost or GateOnOperator. A host with no operator to
	// confirm (pull mode, --confirm-timeout 0) evaluates operator gates
	// itself: a gate is never skipped.
	RunOn string `json:"run_on"`
	// URL is the Prometheus server's base URL (the query goes to
	// URL/api/v1/query).
	URL   string `json:"url"`
	Query string `json:"query"`
	// Min and Max bound every sample (at least one is set).
	Min *float64 `json:"min,omitempty"`
	Max *float64 `json:"max,omitempty"`
	// WindowMS is how long the gate evaluates; IntervalMS the pause
	// between evaluations; the evaluations are at 0, IntervalMS,
	// 2*IntervalMS, ... up to WindowMS.
	WindowMS   int64 `json:"window_ms"`
	IntervalMS int64 `json:"interval_ms"`
	// MinSamples is how many evaluations must return a value (at least 1,
	// at most the number of evaluations).
	MinSamples int `json:"min_samples"`
	// QueryTimeoutMS bounds one query.
	QueryTimeoutMS int64 `json:"query_timeout_ms"`
}

// Evaluations is how many times g is evaluated: at 0, IntervalMS, ...
// up to WindowMS.
func (g MetricGate) Evaluations() int {
	if g.IntervalMS <= 0 {
		return 1
	}
	return int(g.WindowMS/g.IntervalMS) + 1
}

// Parse decodes and validates a manifest. It rejects unknown fields and any
// schema version other than [SchemaVersion].
func Parse(data []byte) (*Manifest, error) { return parse(data, true) }

// ParseLenient is [Parse] that ignores fields it does not know (still of
// schema version [SchemaVersion]). An agent reads the manifests of systems
// the machine ran this way, only to know what they manage: a rollback by
// an older agent from a generation whose manifest has optional fields
// added since must not fail on them. What is applied is always read with
// Parse.
func ParseLenient(data []byte) (*Manifest, error) { return parse(data, false) }

func parse(data []byte, strict bool) (*Manifest, error) {
	var probe struct {
		SchemaVersion *int `json:"schema_version"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if probe.SchemaVersion == nil {
		return nil, errors.New("manifest: no schema_version")
	}
	if *probe.SchemaVersion != SchemaVersion {
		return nil, fmt.Errorf("manifest: schema_version %d is not supported (this program reads %d)", *probe.SchemaVersion, SchemaVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if strict {
		dec.DisallowUnknownFields()
	}
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if dec.More() {
		return nil, errors.New("manifest: trailing data")
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Marshal sorts m into canonical order, validates it and returns its
// canonical encoding.
func (m *Manifest) Marshal() ([]byte, error) {
	m.Sort()
	if err := m.Validate(); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m.normalized()); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	return b.Bytes(), nil
}

// normalized returns a shallow copy in which every nil list is empty, so the
// encoding always has every list key.
func (m *Manifest) normalized() *Manifest {
	c := *m
	nonNil(&c.Packages)
	nonNil(&c.Groups)
	nonNil(&c.Users)
	nonNil(&c.Directories)
	nonNil(&c.Files)
	nonNil(&c.Symlinks)
	nonNil(&c.Secrets)
	nonNil(&c.Sysctls)
	nonNil(&c.Units)
	nonNil(&c.ActivationScripts)
	nonNil(&c.HealthChecks)
	return &c
}

func nonNil[T any](s *[]T) {
	if *s == nil {
		*s = []T{}
	}
}

// Sort puts every list of m into canonical order: by name, path or key.
func (m *Manifest) Sort() {
	sortBy(m.Packages, func(p Package) string { return p.Name })
	sortBy(m.Groups, func(g Group) string { return g.Name })
	for i := range m.Groups {
		m.Groups[i].Members = sortedSet(m.Groups[i].Members)
	}
	sortBy(m.Users, func(u User) string { return u.Name })
	for i := range m.Users {
		m.Users[i].Groups = sortedSet(m.Users[i].Groups)
	}
	sortBy(m.Directories, func(d Directory) string { return d.Path })
	sortBy(m.Files, func(f File) string { return f.Path })
	sortBy(m.Symlinks, func(s Symlink) string { return s.Path })
	sortBy(m.Secrets, func(s Secret) string { return s.Name })
	for i := range m.Secrets {
		m.Secrets[i].Units = sortedSet(m.Secrets[i].Units)
	}
	sortBy(m.Sysctls, func(s Sysctl) string { return s.Key })
	sortBy(m.Units, func(u Unit) string { return u.Name })
	for i := range m.Units {
		m.Units[i].WantedBy = sortedSet(m.Units[i].WantedBy)
	}
	sortBy(m.ActivationScripts, func(a ActivationScript) string { return a.Name })
	for i := range m.ActivationScripts {
		m.ActivationScripts[i].After = sortedSet(m.ActivationScripts[i].After)
	}
	sortBy(m.HealthChecks, func(h HealthCheck) string { return h.Name })
	sortBy(m.Images, func(i Image) string { return i.Digest })
	sortBy(m.MetricGates, func(g MetricGate) string { return g.Name })
	m.RevokedSecrets = sortedSet(m.RevokedSecrets)
}

func sortBy[T any](s []T, key func(T) string) {
	slices.SortStableFunc(s, func(a, b T) int { return strings.Compare(key(a), key(b)) })
}

func sortedSet(s []string) []string {
	if s == nil {
		return nil
	}
	out := slices.Clone(s)
	slices.Sort(out)
	return slices.Compact(out)
}

// StorePaths returns every store path m refers to, sorted and without
// duplicates: the references of the system path besides its own entries.
func (m *Manifest) StorePaths() []string {
	var ps []string
	add := func(p string) {
		if p != "" {
			ps = append(ps, p)
		}
	}
	add(m.Agent)
	for _, p := range m.Packages {
		add(p.Path)
	}
	for _, f := range m.Files {
		add(f.Source)
	}
	for _, s := range m.Secrets {
		add(s.Source)
	}
	if m.Firewall != nil {
		add(m.Firewall.Ruleset)
	}
	for _, u := range m.Units {
		add(u.Source)
	}
	for _, a := range m.ActivationScripts {
		add(a.Source)
	}
	for _, i := range m.Images {
		add(i.Path)
	}
	return sortedSet(ps)
}

// Validate checks that m is well formed: the schema version, absolute clean
// paths, store paths inside StoreDir, modes, known health check types and no
// two entries with the same key. It returns all problems found, joined.
func (m *Manifest) Validate() error {
	v := &validator{storeDir: m.StoreDir}
	if m.SchemaVersion != SchemaVersion {
		v.errf("schema_version is %d, want %d", m.SchemaVersion, SchemaVersion)
	}
	if m.Host == "" {
		v.errf("host is empty")
	}
	if !path.IsAbs(m.StoreDir) || path.Clean(m.StoreDir) != m.StoreDir || m.StoreDir == "/" {
		v.errf("store_dir %q is not an absolute clean directory", m.StoreDir)
	}
	v.storePath("agent", m.Agent)
	seen := map[string]bool{}
	unique := func(kind, key string) {
		if seen[kind+"\x00"+key] {
			v.errf("duplicate %s %q", kind, key)
		}
		seen[kind+"\x00"+key] = true
	}
	for _, i := range m.Images {
		unique("image", i.Digest)
		if !ValidSecretVersion(i.Digest) {
			v.errf("image %q: the digest is not \"sha256:\" and 64 lowercase hex digits", i.Digest)
		}
		v.storePath("image "+i.Digest, i.Path)
		if u := i.User; u != nil && (u.UID <= 0 || u.GID < 0 || u.UID >= 1<<32-1 || u.GID >= 1<<32-1) {
			v.errf("image %q: user %d:%d is not a valid non-root user", i.Digest, u.UID, u.GID)
		}
		if u := i.User; u != nil && u.Name != "" && !validAccount(u.Name) {
			v.errf("image %q: user name %q is not a valid account name", i.Digest, u.Name)
		}
	}
	for _, p := range m.Packages {
		unique("package", p.Name)
		v.name("package", p.Name)
		v.storePath("package "+strconv.Quote(p.Name), p.Path)
	}
	for _, g := range m.Groups {
		unique("group", g.Name)
		v.name("group", g.Name)
	}
	for _, u := range m.Users {
		unique("user", u.Name)
		v.name("user", u.Name)
		if u.Group == "" {
			v.errf("user %q: no primary group", u.Name)
		}
		v.absPath("user "+strconv.Quote(u.Name)+" home", u.Home)
	}
	// Paths the agent creates must be unique across files, directories,
	// symlinks and secrets.
	for _, d := range m.Directories {
		unique("path", d.Path)
		v.absPath("directory", d.Path)
		v.mode("directory "+strconv.Quote(d.Path), d.Mode)
	}
	for _, f := range m.Files {
		unique("path", f.Path)
		v.absPath("file", f.Path)
		v.storePath("file "+strconv.Quote(f.Path), f.Source)
		v.mode("file "+strconv.Quote(f.Path), f.Mode)
	}
	for _, s := range m.Symlinks {
		unique("path", s.Path)
		v.absPath("symlink", s.Path)
		if s.Target == "" {
			v.errf("symlink %q: empty target", s.Path)
		}
	}
	for _, s := range m.Secrets {
		unique("secret", s.Name)
		unique("path", s.Path)
		v.name("secret", s.Name)
		v.storePath("secret "+strconv.Quote(s.Name), s.Source)
		v.absPath("secret "+strconv.Quote(s.Name), s.Path)
		v.mode("secret "+strconv.Quote(s.Name), s.Mode)
	}
	for _, s := range m.Sysctls {
		unique("sysctl", s.Key)
		if s.Key == "" || strings.ContainsAny(s.Key, "/ \t\n") || strings.Contains(s.Key, "..") {
			v.errf("sysctl key %q is not a dotted parameter name", s.Key)
		}
	}
	if m.Firewall != nil {
		v.storePath("firewall ruleset", m.Firewall.Ruleset)
		if m.Firewall.Table == "" {
			v.errf("firewall: empty table")
		}
	}
	for _, u := range m.Units {
		unique("unit", u.Name)
		if !strings.Contains(u.Name, ".") || strings.Contains(u.Name, "/") {
			v.errf("unit name %q has no unit type suffix", u.Name)
		}
		v.storePath("unit "+strconv.Quote(u.Name), u.Source)
		if len(u.RestartHash) != 64 {
			v.errf("unit %q: restart_hash is not a hex SHA-256", u.Name)
		}
	}
	for _, a := range m.ActivationScripts {
		unique("activation script", a.Name)
		v.name("activation script", a.Name)
		v.storePath("activation script "+strconv.Quote(a.Name), a.Source)
	}
	for _, h := range m.HealthChecks {
		unique("health check", h.Name)
		v.name("health check", h.Name)
		switch h.Type {
		case CheckHTTP:
			if h.URL == "" {
				v.errf("health check %q: http check without url", h.Name)
			}
		case CheckTCP:
			if h.Address == "" {
				v.errf("health check %q: tcp check without address", h.Name)
			}
		case CheckCommand:
			if len(h.Command) == 0 {
				v.errf("health check %q: command check without command", h.Name)
			}
		case CheckUnitActive:
			if h.Unit == "" {
				v.errf("health check %q: unit_active check without unit", h.Name)
			}
		default:
			v.errf("health check %q: unknown type %q", h.Name, h.Type)
		}
		if h.TimeoutMS <= 0 {
			v.errf("health check %q: timeout_ms must be positive", h.Name)
		}
		if h.IntervalMS <= 0 {
			v.errf("health check %q: interval_ms must be positive", h.Name)
		}
		if h.AttemptTimeoutMS < 0 || h.AttemptTimeoutMS > h.TimeoutMS {
			v.errf("health check %q: attempt_timeout_ms must be positive and at most timeout_ms", h.Name)
		}
	}
	for _, g := range m.MetricGates {
		unique("health check", g.Name)
		v.name("health check", g.Name)
		if g.RunOn != GateOnHost && g.RunOn != GateOnOperator {
			v.errf("health check %q: run_on %q is not host or operator", g.Name, g.RunOn)
		}
		if !strings.HasPrefix(g.URL, "http://") && !strings.HasPrefix(g.URL, "https://") {
			v.errf("health check %q: prometheus url %q is not http(s)", g.Name, g.URL)
		}
		if g.Query == "" {
			v.errf("health check %q: prometheus check without query", g.Name)
		}
		if g.Min == nil && g.Max == nil {
			v.errf("health check %q: prometheus check without min or max", g.Name)
		}
		if g.Min != nil && g.Max != nil && *g.Min > *g.Max {
			v.errf("health check %q: min %v is above max %v", g.Name, *g.Min, *g.Max)
		}
		if g.WindowMS < 0 || g.IntervalMS <= 0 || g.QueryTimeoutMS <= 0 {
			v.errf("health check %q: window_ms must not be negative, interval_ms and query_timeout_ms must be positive", g.Name)
		}
		if g.MinSamples < 1 || g.MinSamples > g.Evaluations() {
			v.errf("health check %q: min_samples %d is not between 1 and the %d evaluations of the window", g.Name, g.MinSamples, g.Evaluations())
		}
	}
	for i, r := range m.RevokedSecrets {
		if !ValidSecretVersion(r) {
			v.errf("revoked secret version %q is not sha256:HEX", r)
		} else if i > 0 && r <= m.RevokedSecrets[i-1] {
			v.errf("revoked_secrets are not sorted and unique at %q", r)
		}
	}
	return v.err()
}

type validator struct {
	storeDir string
	errs     []error
}

func (v *validator) errf(format string, args ...any) {
	v.errs = append(v.errs, fmt.Errorf("manifest: "+format, args...))
}

func (v *validator) err() error { return errors.Join(v.errs...) }

func (v *validator) name(kind, name string) {
	if name == "" {
		v.errf("%s with an empty name", kind)
	}
}

func (v *validator) absPath(what, p string) {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
		v.errf("%s path %q is not absolute and clean", what, p)
	}
}

func (v *validator) storePath(what, p string) {
	if path.Dir(p) != v.storeDir || len(path.Base(p)) < 34 || path.Base(p)[32] != '-' {
		v.errf("%s: %q is not a store path in %q", what, p, v.storeDir)
	}
}

func (v *validator) mode(what, mode string) {
	if len(mode) != 4 {
		v.errf("%s: mode %q is not four octal digits", what, mode)
		return
	}
	if _, err := strconv.ParseUint(mode, 8, 32); err != nil {
		v.errf("%s: mode %q is not four octal digits", what, mode)
	}
}

// validAccount reports whether name is a portable account name:
// [a-z_][a-z0-9_-]*, at most 32 characters.
func validAccount(name string) bool {
	if name == "" || len(name) > 32 {
		return false
	}
	for i, c := range name {
		if !(c >= 'a' && c <= 'z' || c == '_' || i > 0 && (c >= '0' && c <= '9' || c == '-')) {
			return false
		}
	}
	return true
}
