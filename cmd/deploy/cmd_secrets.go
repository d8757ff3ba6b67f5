package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"filippo.io/age"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/secrets"
	"github.com/hashicorp/hcl/v2"
)

// secretsCommands are deploy secrets'.
var secretsCommands = []command{
	{name: "list", summary: "which host can read which secret file, and which files are stale", run: runSecretsList},
	{name: "edit", summary: "decrypt a secret (NAME or path/to/file.age) into $EDITOR, re-encrypt it", run: runSecretsEdit},
	{name: "rekey", summary: "re-encrypt stale secret files (NAME... or all) to their current recipients (--force: all)", run: runSecretsRekey},
	{name: "revoke", summary: "revoke every earlier version of a secret (NAME or path/to/file.age) in secrets/revoked: no host installs them again", run: runSecretsRevoke},
}

// secretsFlags are the flags every secrets subcommand has.
type secretsFlags struct {
	dir        string
	identities stringList
}

// fleetSecrets evaluates every host of the fleet in dir (without building
// anything) and returns its secret files, including .age files in
// secrets/ that no host uses (encrypted to the admins only).
func fleetSecrets(ctx context.Context, e *env, dir string) (*secrets.Files, error) {
	f, diags := builder.Load(dir)
	var uses []builder.SecretUse
	if !diags.HasErrors() {
		var d hcl.Diagnostics
		uses, d = builder.SecretUses(ctx, f)
		diags = append(diags, d...)
	}
	if diags.HasErrors() {
		e.printDiags(f, diags)
		return nil, configError(diags)
	}
	return builder.FleetSecretFiles(f, uses, f.SecretFiles()), nil
}

// lookupSecretFile finds the file NAME means (see secrets.Files.Lookup).
func lookupSecretFile(files *secrets.Files, name string) (*secrets.File, error) {
	f, err := files.Lookup(name)
	if errors.Is(err, secrets.ErrUnknownSecret) {
		return nil, withHint(err, ExitUsage,
			fmt.Sprintf("declare it first (secret %q { source = \"secrets/%s.age\" }) or pass a path ending in .age", name, name))
	} else if err != nil {
		return nil, &exitError{code: ExitUsage, err: err}
	}
	return f, nil
}

// identities loads the operator's identities: -i files, else
// $DEPLOY_AGE_IDENTITY, else ~/.ssh/id_ed25519.
func (sf *secretsFlags) load(e *env) ([]age.Identity, error) {
	paths := []string(sf.identities)
	if len(paths) == 0 {
		if p := e.getenv("DEPLOY_AGE_IDENTITY"); p != "" {
			paths = []string{p}
		} else if h := e.getenv("HOME"); h != "" {
			paths = []string{filepath.Join(h, ".ssh", "id_ed25519")}
		}
	}
	ids, err := secrets.LoadIdentities(paths...)
	if err != nil {
		return nil, withHint(err, ExitConfig, "pass -i FILE or set DEPLOY_AGE_IDENTITY to an age identity file or an unencrypted SSH ed25519 key of an admin")
	}
	return ids, nil
}

func (sf *secretsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&sf.dir, "C", ".", "fleet `directory`")
	fs.Var(&sf.identities, "i", "identity `file` to decrypt with (age identity or SSH private key; repeatable)")
}

// checkRecipients refuses to encrypt a file to fewer readers than it
// needs, saying what to fix.
func checkRecipients(file *secrets.File) error {
	err := file.CheckRecipients()
	if err == nil {
		return nil
	}
	if len(file.Problems) > 0 {
		return withHint(err, ExitConfig, "set host_key = \"ssh-ed25519 ...\" on the host (deploy keyscan ADDRESS prints it)")
	}
	return withHint(err, ExitConfig, "declare an admin: admin \"NAME\" { keys = [\"age1...\"] }")
}

// secretsListRow is one line of `deploy secrets list`.
type secretsListRow struct {
	*secrets.File
	secrets.Inspection
}

func runSecretsList(ctx context.Context, e *env, args []string) error {
	var sf secretsFlags
	var asJSON bool
	fs := newFlags(e, "secrets list", "")
	sf.register(fs)
	fs.BoolVar(&asJSON, "json", false, "print JSON")
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	files, err := fleetSecrets(ctx, e, sf.dir)
	if err != nil {
		return err
	}
	revocations, err := secrets.ReadRevocations(files.Dir)
	if err != nil {
		return withHint(err, ExitConfig, "fix "+secrets.RevokedFile+" (lines \"sha256:HEX FILE TIME\")")
	}
	revoked := secrets.Versions(revocations)
	rows := make([]secretsListRow, 0, len(files.Files))
	stale, rotate := 0, 0
	for _, f := range files.Files {
		row := secretsListRow{File: f, Inspection: f.Inspect()}
		if data, err := os.ReadFile(f.Path); err == nil && slices.Contains(revoked, manifest.SecretVersion(data)) {
			row.State = secrets.StateRevoked
			row.Message = "its current version " + manifest.SecretVersion(data) + " is revoked in " + secrets.RevokedFile + ": rotate it (deploy secrets edit)"
		}
		switch row.State {
		case secrets.StateOK:
		case secrets.StateRevoked:
			rotate++
		default:
			stale++
		}
		rows = append(rows, row)
	}
	if asJSON {
		return writeJSON(e.stdout, rows)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FILE\tSECRETS\tHOSTS\tSTATUS")
	for _, r := range rows {
		hosts := "-"
		if len(r.Hosts) > 0 {
			hosts = strings.Join(r.Hosts, ",")
		}
		secs := "-"
		if len(r.Secrets) > 0 {
			secs = strings.Join(r.Secrets, ",")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.File.File, secs, hosts, r.State)
	}
	tw.Flush()
	for _, r := range rows {
		for _, p := range r.Problems {
			fmt.Fprintf(e.stderr, "deploy: %s: %s\n", r.File.File, p)
		}
		if r.Message != "" {
			fmt.Fprintf(e.stderr, "deploy: %s: %s: %s\n", r.File.File, r.State, r.Message)
		}
	}
	if stale > 0 {
		fmt.Fprintf(e.stderr, "deploy: hint: %d secret files need attention; run deploy secrets rekey\n", stale)
	}
	if rotate > 0 {
		fmt.Fprintf(e.stderr, "deploy: hint: %d secret files are at a revoked version; give them a new value with deploy secrets edit (a rekey keeps the revoked value)\n", rotate)
	}
	return nil
}

func runSecretsEdit(ctx context.Context, e *env, args []string) error {
	var sf secretsFlags
	fs := newFlags(e, "secrets edit", "NAME|FILE.age")
	sf.register(fs)
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	files, err := fleetSecrets(ctx, e, sf.dir)
	if err != nil {
		return err
	}
	file, err := lookupSecretFile(files, pos[0])
	if err != nil {
		return err
	}
	if err := checkRecipients(file); err != nil {
		return err
	}
	var ids []age.Identity
	if _, err := os.Stat(file.Path); err == nil {
		if ids, err = sf.load(e); err != nil {
			return err
		}
	} else if err := os.MkdirAll(filepath.Dir(file.Path), 0o755); err != nil {
		return err
	}
	tmp, err := secrets.PrivateTempDir(e.getenv)
	if err != nil {
		return withHint(err, ExitConfig, "set XDG_RUNTIME_DIR to a directory on tmpfs; deploy never writes plaintext to disk")
	}
	editor := e.getenv("VISUAL")
	if editor == "" {
		editor = e.getenv("EDITOR")
	}
	if editor == "" {
		editor = "vi"
	}
	changed, err := secrets.Edit(ctx, secrets.EditOptions{
		File: file.Path, Recipients: file.Recipients, Identities: ids, Editor: editor, TempDir: tmp,
		Stdin: e.stdin, Stdout: e.stderr, Stderr: e.stderr,
	})
	if err != nil {
		return err
	}
	if changed {
		var owners []string
		for _, r := range file.Recipients {
			owners = append(owners, r.Owner)
		}
		fmt.Fprintf(e.stderr, "deploy: %s: encrypted to %s\n", file.File, strings.Join(owners, ", "))
		return nil
	}
	fmt.Fprintf(e.stderr, "deploy: %s: no changes\n", file.File)
	if st, err := secrets.FileStatus(file.Path, file.Recipients); err == nil && st.Stale {
		fmt.Fprintf(e.stderr, "deploy: hint: %s is stale; run deploy secrets rekey %s\n", file.File, pos[0])
	}
	return nil
}

func runSecretsRekey(ctx context.Context, e *env, args []string) error {
	var sf secretsFlags
	var force bool
	fs := newFlags(e, "secrets rekey", "[NAME|FILE.age...]")
	sf.register(fs)
	fs.BoolVar(&force, "force", false, "re-encrypt even files whose recipients are current (each rewrite restarts the services using it on the next deploy)")
	pos, err := parse(fs, args, 0, -1)
	if err != nil {
		return err
	}
	files, err := fleetSecrets(ctx, e, sf.dir)
	if err != nil {
		return err
	}
	selected := files.Files
	if len(pos) > 0 {
		selected = nil
		for _, n := range pos {
			file, err := lookupSecretFile(files, n)
			if err != nil {
				return err
			}
			selected = append(selected, file)
		}
	}
	var ids []age.Identity
	rekeyed, current := 0, 0
	for _, file := range selected {
		st, err := secrets.FileStatus(file.Path, file.Recipients)
		if errors.Is(err, os.ErrNotExist) {
			if len(pos) > 0 {
				return fmt.Errorf("rekey %q: file does not exist (deploy secrets edit creates it)", file.File)
			}
			fmt.Fprintf(e.stderr, "deploy: %s: missing, skipped\n", file.File)
			continue
		}
		if err != nil {
			return fmt.Errorf("rekey: %w", err)
		}
		if !st.Stale && !force {
			current++
			continue
		}
		if err := checkRecipients(file); err != nil {
			return err
		}
		if ids == nil {
			if ids, err = sf.load(e); err != nil {
				return err
			}
		}
		if err := secrets.Rekey(file.Path, ids, file.Recipients); err != nil {
			return err
		}
		rekeyed++
		fmt.Fprintf(e.stderr, "deploy: %s: rekeyed for %d recipients\n", file.File, len(file.Recipients))
	}
	fmt.Fprintf(e.stderr, "deploy: %d rekeyed, %d already current\n", rekeyed, current)
	return nil
}
