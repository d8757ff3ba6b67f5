package activation

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/secrets"
)

// RevokedSecretsFile is the host's record of revoked secret versions: the
// union of every manifest's RevokedSecrets this host has seen, one version
// a line. It only grows ([secrets.RecordRevoked]).
func (l Layout) RevokedSecretsFile() string {
	return filepath.Join(l.withDefaults().StateDir, "revoked-secrets")
}

// RevokedSecrets returns the host's record of revoked secret versions.
func (l Layout) RevokedSecrets() ([]string, error) {
	return secrets.ReadRevokedRecord(l.RevokedSecretsFile())
}

// RevokedSecretError is an activation refused because the generation holds
// a revoked version of a secret and the machine has no version of that
// secret that is not revoked to keep instead. Nothing was changed.
type RevokedSecretError struct {
	// Secret is the secret's name and Version its revoked ciphertext
	// ([manifest.SecretVersion]) in Generation.
	Secret, Version string
	Generation      int
}

func (e *RevokedSecretError) Error() string {
	of := "the system being activated"
	if e.Generation > 0 {
		of = fmt.Sprintf("generation %d", e.Generation)
	}
	return fmt.Sprintf("secret %q of %s is the revoked version %s, and the running system has no other version of it to keep: "+
		"roll back to a generation whose version is not revoked, or deploy one with a rotated version (deploy secrets edit %s)", e.Secret, of, e.Version, e.Secret)
}

// KeptSecret is a secret whose version in the generation being activated
// is revoked, installed from the version the machine runs instead.
type KeptSecret struct {
	// Secret is the secret's name; Revoked the generation's version and
	// Kept the machine's ([manifest.SecretVersion]).
	Secret, Revoked, Kept string
	// Source is the kept version's ciphertext (store path).
	Source string
}

func (k KeptSecret) String() string {
	return fmt.Sprintf("secret %q: the generation's version %s is revoked; kept the running version %s", k.Secret, k.Revoked, k.Kept)
}

// secretPlan is what the secrets of a generation become on this machine.
type secretPlan struct {
	// Secrets are next's secrets, with the kept versions' sources.
	Secrets []manifest.Secret
	// Kept are the secrets installed from the machine's version.
	Kept []KeptSecret
	// Revoked is the host's record, next's versions included.
	Revoked []string
}

// sources returns the kept secrets' sources by name (applied.json).
func (p *secretPlan) sources() map[string]string {
	if len(p.Kept) == 0 {
		return nil
	}
	m := map[string]string{}
	for _, k := range p.Kept {
		m[k.Secret] = k.Source
	}
	return m
}

// planSecrets records next's revoked versions in the host's record, then
// decides which version of each of next's secrets is installed: its own
// unless that is revoked; then the version of the same secret the machine
// has now (prev, the machine's manifest) unless that is revoked too, or
// absent: then a *[RevokedSecretError] for generation gen.
func (l Layout) planSecrets(prev, next *manifest.Manifest, gen int, realPath func(string) string) (*secretPlan, error) {
	revoked, err := secrets.RecordRevoked(l.RevokedSecretsFile(), next.RevokedSecrets)
	if err != nil {
		return nil, err
	}
	return decideSecrets(prev, next, gen, revoked, realPath)
}

// decideSecrets is [Layout.planSecrets]'s decision, given the record.
func decideSecrets(prev, next *manifest.Manifest, gen int, revoked []string, realPath func(string) string) (*secretPlan, error) {
	p := &secretPlan{Secrets: next.Secrets, Revoked: revoked}
	if len(revoked) == 0 || len(next.Secrets) == 0 {
		return p, nil
	}
	isRevoked := map[string]bool{}
	for _, v := range revoked {
		isRevoked[v] = true
	}
	if realPath == nil {
		realPath = func(s string) string { return s }
	}
	version := func(src string) (string, error) {
		data, err := os.ReadFile(realPath(src))
		if err != nil {
			return "", err
		}
		return manifest.SecretVersion(data), nil
	}
	old := map[string]manifest.Secret{}
	if prev != nil {
		for _, s := range prev.Secrets {
			old[s.Name] = s
		}
	}
	p.Secrets = make([]manifest.Secret, len(next.Secrets))
	for i, s := range next.Secrets {
		p.Secrets[i] = s
		v, err := version(s.Source)
		if err != nil {
			return nil, fmt.Errorf("secret %q: read ciphertext: %w", s.Name, err)
		}
		if !isRevoked[v] {
			continue
		}
		o, ok := old[s.Name]
		if !ok {
			return nil, &RevokedSecretError{Secret: s.Name, Version: v, Generation: gen}
		}
		ov, err := version(o.Source)
		if err != nil || isRevoked[ov] {
			return nil, &RevokedSecretError{Secret: s.Name, Version: v, Generation: gen}
		}
		p.Secrets[i].Source = o.Source
		p.Kept = append(p.Kept, KeptSecret{Secret: s.Name, Revoked: v, Kept: ov, Source: o.Source})
	}
	return p, nil
}

// withKeptSources returns m with the sources of the secrets in kept (by
// name) replaced: what the machine really has when an application kept a
// running version instead of a revoked one.
func withKeptSources(m *manifest.Manifest, kept map[string]string) *manifest.Manifest {
	if m == nil || len(kept) == 0 {
		return m
	}
	c := *m
	c.Secrets = make([]manifest.Secret, len(m.Secrets))
	for i, s := range m.Secrets {
		c.Secrets[i] = s
		if src, ok := kept[s.Name]; ok {
			c.Secrets[i].Source = src
		}
	}
	return &c
}

// markRevoked sets each generation's RevokedSecrets: its secrets whose
// version is in the host's record. A generation whose manifest cannot be
// read is left unmarked.
func (l Layout) markRevoked(gens []*Generation) {
	revoked, err := l.RevokedSecrets()
	if err != nil || len(revoked) == 0 {
		return
	}
	isRevoked := map[string]bool{}
	for _, v := range revoked {
		isRevoked[v] = true
	}
	real := closure.NewTargetStore(l.withDefaults().StateDir).RealPath
	for _, g := range gens {
		m, err := readManifest(g.System, real, manifest.ParseLenient)
		if err != nil {
			continue
		}
		for _, s := range m.Secrets {
			if data, err := os.ReadFile(real(s.Source)); err == nil && isRevoked[manifest.SecretVersion(data)] {
				g.RevokedSecrets = append(g.RevokedSecrets, s.Name)
			}
		}
	}
}
