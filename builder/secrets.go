package builder

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"

	"github.com/declarative/deploy/modules"
	"github.com/declarative/deploy/secrets"
	"github.com/hashicorp/hcl/v2"
	"golang.org/x/crypto/ssh"
)

// SecretUse is one host's use of a secret file, as [SecretUses] finds it.
type SecretUse struct {
	// Secret is the secret resource's name.
	Secret string
	// Source is its file, relative to the fleet directory and clean.
	Source string
	// Host is the host that uses it, and HostKey the host's host_key.
	Host, HostKey string
	// Range is the source attribute's expression.
	Range hcl.Range
}

// SecretUses evaluates every host of f without building or fetching
// anything and returns each use of a secret file, host by host. A source
// outside the fleet directory is an error diagnostic at its attribute.
func SecretUses(ctx context.Context, f *Fleet) ([]SecretUse, hcl.Diagnostics) {
	pb := (&Builder{}).packageBuilder(f, true)
	var uses []SecretUse
	var diags hcl.Diagnostics
	for _, h := range f.Hosts {
		cfg, d := f.Evaluate(ctx, h.Name, pb)
		diags = append(diags, d...)
		if d.HasErrors() {
			continue
		}
		u, d := secretUsesOf(h, cfg)
		uses, diags = append(uses, u...), append(diags, d...)
	}
	return uses, dedupe(diags)
}

// secretUsesOf returns host h's uses of secret files in its evaluated
// configuration cfg.
func secretUsesOf(h *Host, cfg *modules.Config) ([]SecretUse, hcl.Diagnostics) {
	var uses []SecretUse
	var diags hcl.Diagnostics
	for _, r := range cfg.Resources {
		if r.Kind.Name != modules.KindSecret {
			continue
		}
		src := r.String("source", "")
		rel := filepath.Clean(src)
		if filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Secret source outside the fleet directory",
				Detail:  fmt.Sprintf("The source of secret %q, %q, is outside the fleet directory. Secret sources are paths relative to the fleet directory, like secrets/%s.age.", r.Name, src, r.Name),
				Subject: r.Range("source")})
			continue
		}
		uses = append(uses, SecretUse{Secret: r.Name, Source: rel, Host: h.Name, HostKey: h.HostKey, Range: *r.Range("source")})
	}
	return uses, diags
}

// FleetSecretFiles turns the fleet's secret uses (from [SecretUses]), its
// admins and stray .age files (relative to the fleet directory: files no
// host uses) into its secret files and their recipients.
func FleetSecretFiles(f *Fleet, uses []SecretUse, stray []string) *secrets.Files {
	su := make([]secrets.Use, len(uses))
	for i, u := range uses {
		su[i] = secrets.Use{Secret: u.Secret, File: u.Source, Host: u.Host, HostKey: u.HostKey}
	}
	admins := make([]secrets.Admin, len(f.Admins))
	for i, a := range f.Admins {
		admins[i] = secrets.Admin{Name: a.Name, Keys: a.Keys}
	}
	return secrets.FleetFiles(f.Dir, su, admins, stray)
}

// checkSecrets reads the header of every secret file the fleet's hosts use,
// without decrypting, and returns an error at a use's source for each host
// that could not decrypt the file: a host without an ssh-ed25519 host_key,
// a file that is missing or not an age file (a placeholder), or one not
// encrypted to the host's key. A file that is stale only for admins (one
// missing, or encrypted to a key that is no longer a recipient) is a
// warning: the hosts can deploy it.
func checkSecrets(f *Fleet, uses []SecretUse) hcl.Diagnostics {
	if len(uses) == 0 {
		return nil
	}
	var diags hcl.Diagnostics
	byFile := map[string][]SecretUse{}
	for _, u := range uses {
		byFile[u.Source] = append(byFile[u.Source], u)
	}
	for _, file := range FleetSecretFiles(f, uses, nil).Files {
		fileUses := byFile[file.File]
		if len(fileUses) == 0 {
			continue
		}
		// One diagnostic per host (the first of its uses of the file).
		var hostUses []SecretUse
		for _, u := range fileUses {
			if !slices.ContainsFunc(hostUses, func(x SecretUse) bool { return x.Host == u.Host }) {
				hostUses = append(hostUses, u)
			}
		}
		errAt := func(u SecretUse, summary, format string, args ...any) {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary,
				Detail: fmt.Sprintf(format, args...), Subject: u.Range.Ptr()})
		}
		// Hosts without a key, one diagnostic per use site.
		readers := map[string]bool{}
		var keyless []SecretUse
		for _, u := range hostUses {
			if secrets.HostRecipient(u.HostKey) != "" {
				readers[u.Host] = true
			} else {
				keyless = append(keyless, u)
			}
		}
		for len(keyless) > 0 {
			at := keyless[0].Range
			var names []string
			rest := keyless[:0]
			for _, u := range keyless {
				if u.Range == at {
					names = append(names, fmt.Sprintf("%q", u.Host))
				} else {
					rest = append(rest, u)
				}
			}
			keyless = rest
			errAt(SecretUse{Range: at}, "Secret a host cannot decrypt",
				"%s %s: no ssh-ed25519 host_key, and the agent decrypts %s with the host's ssh-ed25519 key. Give %s a host_key (deploy keyscan ADDRESS prints it), then run deploy secrets rekey %s.",
				plural(len(names), "Host", "Hosts"), strings.Join(names, ", "), file.File, plural(len(names), "it", "each"), file.File)
		}
		st, err := secrets.FileStatus(file.Path, file.Recipients)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue // realizing the host reports it ("Cannot read source")
		case err != nil && secrets.IsPlaceholder(file.Path):
			errAt(fileUses[0], "Secret file is a placeholder", "%s is a placeholder, not an age ciphertext: once every host that uses it has its host_key, deploy secrets edit %s writes the real one.", file.File, fileUses[0].Secret)
			continue
		case err != nil:
			errAt(fileUses[0], "Unreadable secret file", "%s is not an age file that deploy can read: %v.", file.File, err)
			continue
		}
		var others []string
		hostErrs := len(readers) < len(hostUses)
		for _, r := range st.Missing {
			host, isHost := strings.CutPrefix(r.Owner, "host ")
			if !isHost || !readers[host] {
				others = append(others, "not encrypted to "+r.Owner)
				continue
			}
			for _, u := range hostUses {
				if u.Host == host {
					errAt(u, "Secret a host cannot decrypt",
						"Host %q cannot decrypt %s: it is not encrypted to the host's key (%s). An admin whose key it is encrypted to runs deploy secrets rekey %s.", host, file.File, keyFingerprint(r.Key), file.File)
					hostErrs = true
				}
			}
		}
		for _, x := range st.Extra {
			if x.Tag != "" {
				others = append(others, fmt.Sprintf("encrypted to an %s key that is no longer a recipient (tag %s: a removed host or admin, or an old host key, can still decrypt it)", x.Type, x.Tag))
			} else {
				others = append(others, "encrypted to an extra "+x.Type+" key")
			}
		}
		if len(others) > 0 {
			hint := "Its hosts can decrypt it; deploy secrets rekey %[1]s brings it up to date."
			if hostErrs {
				hint = "deploy secrets rekey %[1]s brings it up to date."
			}
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "Stale secret file",
				Detail:  fmt.Sprintf("%s: %s. "+hint, file.File, strings.Join(others, "; ")),
				Subject: fileUses[0].Range.Ptr()})
		}
	}
	return diags
}

// SecretFiles returns the .age files of the fleet's secrets/ directory,
// relative to the fleet directory and sorted: the secret files, including
// those no host uses (yet).
func (f *Fleet) SecretFiles() []string {
	found, _ := filepath.Glob(filepath.Join(f.Dir, "secrets", "*.age"))
	out := make([]string, 0, len(found))
	for _, p := range found {
		out = append(out, filepath.Join("secrets", filepath.Base(p)))
	}
	slices.Sort(out)
	return out
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// keyFingerprint names an SSH public key as ssh-keygen -l does
// ("ssh-ed25519 SHA256:..."), or abbreviated when it does not parse.
func keyFingerprint(key string) string {
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(key))
	if err != nil {
		return abbrevKey(key)
	}
	return k.Type() + " " + ssh.FingerprintSHA256(k)
}
