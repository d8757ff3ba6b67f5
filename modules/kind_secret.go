package modules

import (
	"path"
	"slices"
	"strings"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/manifest"
	"github.com/hashicorp/hcl/v2"
)

// secretKind is an age-encrypted file, decrypted on the host.
func secretKind() *Kind {
	return &Kind{Name: KindSecret, Label: "name", Doc: "an age-encrypted file, decrypted on the host at activation",
		Attrs: []Attr{
			{Name: "source", Type: str, Required: true, Doc: "the .age file inside the fleet directory"},
			{Name: "path", Type: str, Doc: "where the plaintext goes (default /run/deploy/secrets/NAME)"},
			{Name: "owner", Type: str}, {Name: "group", Type: str}, modeAttr,
			{Name: "units", Type: strList, Merge: MergeSet, Doc: "units to restart when it changes (services mentioning its path are added)"},
		},
		Check:   checkSecret,
		Realize: realizeSecrets,
	}
}

// SecretPath returns where secret r's plaintext goes on the host.
func SecretPath(r *Resource) string {
	return r.String("path", path.Join(agentapi.SecretsDir(agentapi.DefaultRunDir), r.Name))
}

func checkSecret(r *Resource) hcl.Diagnostics {
	diags := append(append(checkName(r), checkMode(r)...), checkOwner(r)...)
	if p := SecretPath(r); !path.IsAbs(p) || path.Clean(p) != p {
		diags = append(diags, errAt(r.Range("path"), "Invalid path", "The secret path %q must be absolute and clean.", p))
	}
	if s := r.String("source", ""); !strings.HasSuffix(s, ".age") {
		diags = append(diags, errAt(r.Range("source"), "Invalid secret source",
			"The secret source %q must be an age-encrypted file ending in .age (create it with deploy secrets edit).", s))
	}
	return diags
}

// realizeSecrets stores each ciphertext. A secret's units are those it
// names plus every service whose unit file mentions its path.
func realizeSecrets(c *Realization, rs []*Resource) {
	units := c.serviceUnits()
	for _, r := range rs {
		data, ok := c.read(r, "source")
		if !ok {
			continue
		}
		if v := manifest.SecretVersion(data); slices.Contains(c.z.Revoked, v) {
			c.diags = append(c.diags, errAt(r.Range("source"), "Revoked secret version",
				"The secret file %q is version %s, which secrets/revoked lists: no host installs it. Rotate the secret first (deploy secrets edit %s).",
				r.String("source", ""), v, r.Name))
			continue
		}
		mode, _ := NormalizeMode(r.String("mode", "0400"))
		s := manifest.Secret{Name: r.Name, Path: SecretPath(r), Owner: r.String("owner", "root"),
			Group: r.String("group", "root"), Mode: mode, Units: r.Strings("units")}
		for _, u := range units {
			if strings.Contains(u.text, s.Path) {
				s.Units = append(s.Units, u.name)
			}
		}
		s.Source = c.add(r, StoreName(r.Name+".age", "secret"), data, false, "source")
		c.Manifest.Secrets = append(c.Manifest.Secrets, s)
	}
}
