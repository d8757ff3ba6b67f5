package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"

	"filippo.io/age"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/modules"
	"github.com/declarative/deploy/secrets"
)

// runSecrets dispatches `deploy secrets list|edit|rekey`.
func runSecrets(ctx context.Context, e *env, args []string) error {
	sub := map[string]func(context.Context, *env, []string) error{
		"list": runSecretsList, "edit": runSecretsEdit, "rekey": runSecretsRekey,
	}
	if len(args) == 0 || sub[args[0]] == nil {
		fmt.Fprintln(e.stderr, "usage: deploy secrets list|edit|rekey [flags] [ARGS...]\n\n"+
			"  list          which host can read which secret file, and which files are stale\n"+
			"  edit NAME     decrypt a secret (NAME or path/to/file.age) into $EDITOR, re-encrypt it\n"+
			"  rekey [NAME...] re-encrypt stale secret files to their current recipients (--force: all)")
		if len(args) == 0 {
			return usageErrorf("secrets: missing subcommand")
		}
		if args[0] == "-h" || args[0] == "--help" {
			return nil
		}
		return usageErrorf("secrets: unknown subcommand %q", args[0])
	}
	return sub[args[0]](ctx, e, args[1:])
}

// secretsFlags are the flags every secrets subcommand has.
type secretsFlags struct {
	dir        string
	identities stringList
}

// secretFile is one .age file of the fleet and who must be able to read it.
type secretFile struct {
	// File is the path relative to the fleet directory; abs is absolute.
	File string `json:"file"`
	abs  string
	// Secrets are the names of the secret resources using the file.
	Secrets []string `json:"secrets"`
	// Hosts are the hosts whose configuration uses the file.
	Hosts []string `json:"hosts"`
	// Recipients are the hosts' keys, then the admins' keys.
	Recipients []secrets.Recipient `json:"recipients"`
	// problems make the recipient set incomplete (a host without a key).
	problems []string
}

// fleetSecrets evaluates every host of the fleet in dir (without building
// anything) and returns its secret files, sorted, including .age files in
// secrets/ that no host uses (encrypted to the admins only).
func fleetSecrets(ctx context.Context, e *env, dir string) (*builder.Fleet, []*secretFile, error) {
	f, diags := builder.Load(dir)
	if diags.HasErrors() {
		e.printDiags(f, diags)
		return nil, nil, configError(diags)
	}
	pb := &modules.PackageBuilder{Store: &closure.Store{StoreDir: closure.DefaultStoreDir}, FleetDir: f.Dir, Lock: f.Lock, DryRun: true}
	files := map[string]*secretFile{}
	get := func(rel string) *secretFile {
		sf, ok := files[rel]
		if !ok {
			sf = &secretFile{File: rel, abs: filepath.Join(f.Dir, rel)}
			files[rel] = sf
		}
		return sf
	}
	for _, h := range f.Hosts {
		cfg, d := f.Evaluate(ctx, h.Name, pb)
		if d.HasErrors() {
			e.printDiags(f, d)
			return nil, nil, configError(d)
		}
		for _, r := range cfg.Resources {
			if r.Kind.Name != modules.KindSecret {
				continue
			}
			src := r.String("source", "")
			rel := filepath.Clean(src)
			if filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
				return nil, nil, withHint(fmt.Errorf("secret %q of host %q: source %q is outside the fleet directory", r.Name, h.Name, src),
					ExitConfig, "secret sources are paths relative to the fleet directory, like secrets/NAME.age")
			}
			sf := get(rel)
			if !slices.Contains(sf.Secrets, r.Name) {
				sf.Secrets = append(sf.Secrets, r.Name)
			}
			if slices.Contains(sf.Hosts, h.Name) {
				continue
			}
			sf.Hosts = append(sf.Hosts, h.Name)
			switch fields := strings.Fields(h.HostKey); {
			case len(fields) == 0:
				sf.problems = append(sf.problems, fmt.Sprintf("host %q has no host_key", h.Name))
			case fields[0] != "ssh-ed25519":
				sf.problems = append(sf.problems, fmt.Sprintf("host %q has a %s host_key; the agent decrypts with the ssh-ed25519 host key", h.Name, fields[0]))
			default:
				sf.Recipients = append(sf.Recipients, secrets.Recipient{Owner: "host " + h.Name, Key: fields[0] + " " + fields[1]})
			}
		}
	}
	if extra, _ := filepath.Glob(filepath.Join(f.Dir, "secrets", "*.age")); len(extra) > 0 {
		for _, p := range extra {
			get(filepath.Join("secrets", filepath.Base(p)))
		}
	}
	var out []*secretFile
	for _, sf := range files {
		for _, a := range f.Admins {
			for _, k := range a.Keys {
				sf.Recipients = append(sf.Recipients, secrets.Recipient{Owner: "admin " + a.Name, Key: k})
			}
		}
		sort.Strings(sf.Secrets)
		sort.Strings(sf.Hosts)
		if sf.Secrets == nil {
			sf.Secrets, sf.Hosts = []string{}, []string{}
		}
		out = append(out, sf)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].File < out[j].File })
	return f, out, nil
}

// lookupSecretFile finds the file NAME means: a secret resource name, or a
// path (relative to the fleet directory) ending in .age, which need not
// exist yet.
func lookupSecretFile(f *builder.Fleet, files []*secretFile, name string) (*secretFile, error) {
	var found []*secretFile
	for _, sf := range files {
		if slices.Contains(sf.Secrets, name) {
			found = append(found, sf)
		}
	}
	if len(found) == 1 {
		return found[0], nil
	}
	if len(found) > 1 {
		var names []string
		for _, sf := range found {
			names = append(names, sf.File)
		}
		return nil, usageErrorf("secret %q is ambiguous: it names %s; pass the file instead", name, strings.Join(names, ", "))
	}
	if strings.HasSuffix(name, ".age") {
		p := name
		if filepath.IsAbs(p) {
			rel, err := filepath.Rel(f.Dir, p)
			if err != nil {
				return nil, usageErrorf("secret file %q: %v", name, err)
			}
			p = rel
		}
		p = filepath.Clean(p)
		if p == ".." || strings.HasPrefix(p, "../") {
			return nil, usageErrorf("secret file %q is outside the fleet directory %q", name, f.Dir)
		}
		for _, sf := range files {
			if sf.File == p {
				return sf, nil
			}
		}
		sf := &secretFile{File: p, abs: filepath.Join(f.Dir, p), Secrets: []string{}, Hosts: []string{}}
		for _, a := range f.Admins {
			for _, k := range a.Keys {
				sf.Recipients = append(sf.Recipients, secrets.Recipient{Owner: "admin " + a.Name, Key: k})
			}
		}
		return sf, nil
	}
	return nil, withHint(fmt.Errorf("unknown secret %q", name), ExitUsage,
		fmt.Sprintf("declare it first (secret %q { source = \"secrets/%s.age\" }) or pass a path ending in .age", name, name))
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

func checkRecipients(sf *secretFile) error {
	if len(sf.problems) > 0 {
		return withHint(fmt.Errorf("secret file %q: %s", sf.File, strings.Join(sf.problems, "; ")), ExitConfig,
			"set host_key = \"ssh-ed25519 ...\" on the host (deploy keyscan ADDRESS prints it)")
	}
	if len(sf.Recipients) == 0 {
		return withHint(fmt.Errorf("secret file %q: no recipients (no host uses it and no admin is declared)", sf.File), ExitConfig,
			"declare an admin: admin \"NAME\" { keys = [\"age1...\"] }")
	}
	return nil
}

// secretsListRow is one line of `deploy secrets list`.
type secretsListRow struct {
	*secretFile
	Status   string          `json:"status"` // ok, stale, missing, unreadable, incomplete
	Readable []string        `json:"readable_by"`
	Detail   *secrets.Status `json:"detail,omitempty"`
	Problems []string        `json:"problems,omitempty"`
	Message  string          `json:"message,omitempty"`
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
	_, files, err := fleetSecrets(ctx, e, sf.dir)
	if err != nil {
		return err
	}
	rows := make([]secretsListRow, 0, len(files))
	stale := 0
	for _, f := range files {
		row := secretsListRow{secretFile: f, Readable: []string{}, Problems: f.problems}
		st, err := secrets.FileStatus(f.abs, f.Recipients)
		switch {
		case errors.Is(err, os.ErrNotExist):
			row.Status, row.Message = "missing", "file does not exist (deploy secrets edit creates it)"
		case err != nil:
			row.Status, row.Message = "unreadable", err.Error()
		default:
			row.Detail = &st
			for _, r := range st.Readable {
				row.Readable = append(row.Readable, r.Owner)
			}
			row.Status = "ok"
			if st.Stale {
				row.Status = "stale"
				var why []string
				for _, r := range st.Missing {
					why = append(why, "not encrypted to "+r.Owner)
				}
				for _, x := range st.Extra {
					if x.Tag != "" {
						why = append(why, fmt.Sprintf("encrypted to an unknown %s key (tag %s)", x.Type, x.Tag))
					} else {
						why = append(why, "encrypted to an extra "+x.Type+" key")
					}
				}
				row.Message = strings.Join(why, "; ")
			}
		}
		if len(f.problems) > 0 && row.Status == "ok" {
			row.Status = "incomplete"
		}
		if row.Status != "ok" {
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.File, secs, hosts, r.Status)
	}
	tw.Flush()
	for _, r := range rows {
		for _, p := range r.Problems {
			fmt.Fprintf(e.stderr, "deploy: %s: %s\n", r.File, p)
		}
		if r.Message != "" {
			fmt.Fprintf(e.stderr, "deploy: %s: %s: %s\n", r.File, r.Status, r.Message)
		}
	}
	if stale > 0 {
		fmt.Fprintf(e.stderr, "deploy: hint: %d secret files need attention; run deploy secrets rekey\n", stale)
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
	f, files, err := fleetSecrets(ctx, e, sf.dir)
	if err != nil {
		return err
	}
	file, err := lookupSecretFile(f, files, pos[0])
	if err != nil {
		return err
	}
	if err := checkRecipients(file); err != nil {
		return err
	}
	var ids []age.Identity
	if _, err := os.Stat(file.abs); err == nil {
		if ids, err = sf.load(e); err != nil {
			return err
		}
	} else if err := os.MkdirAll(filepath.Dir(file.abs), 0o755); err != nil {
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
		File: file.abs, Recipients: file.Recipients, Identities: ids, Editor: editor, TempDir: tmp,
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
	if st, err := secrets.FileStatus(file.abs, file.Recipients); err == nil && st.Stale {
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
	f, files, err := fleetSecrets(ctx, e, sf.dir)
	if err != nil {
		return err
	}
	selected := files
	if len(pos) > 0 {
		selected = nil
		for _, n := range pos {
			file, err := lookupSecretFile(f, files, n)
			if err != nil {
				return err
			}
			selected = append(selected, file)
		}
	}
	var ids []age.Identity
	rekeyed, current := 0, 0
	for _, file := range selected {
		st, err := secrets.FileStatus(file.abs, file.Recipients)
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
		if err := secrets.Rekey(file.abs, ids, file.Recipients); err != nil {
			return err
		}
		rekeyed++
		fmt.Fprintf(e.stderr, "deploy: %s: rekeyed for %d recipients\n", file.File, len(file.Recipients))
	}
	fmt.Fprintf(e.stderr, "deploy: %d rekeyed, %d already current\n", rekeyed, current)
	return nil
}
