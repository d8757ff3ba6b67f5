package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/declarative/deploy/manifest"
	"github.com/declarative/deploy/secrets"
)

// runSecretsRevoke records, in the fleet's secrets/revoked, every earlier
// version of a secret file (its git history, plus --version values) so
// that no host installs them again, not even by a rollback. The current
// version stays valid unless --force.
func runSecretsRevoke(ctx context.Context, e *env, args []string) error {
	var sf secretsFlags
	var versions stringList
	var force bool
	fs := newFlags(e, "secrets revoke", "NAME|FILE.age")
	fs.StringVar(&sf.dir, "C", ".", "fleet `directory`")
	fs.Var(&versions, "version", "also revoke this version (`sha256:HEX` of a ciphertext), e.g. one that never was in git; repeatable")
	fs.BoolVar(&force, "force", false, "revoke the current version too (the fleet does not build until the secret is rotated)")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	for _, v := range versions {
		if !manifest.ValidSecretVersion(v) {
			return &exitError{code: ExitUsage, err: fmt.Errorf("secrets revoke: --version %q is not sha256: and 64 lowercase hex digits", v)}
		}
	}
	files, err := fleetSecrets(ctx, e, sf.dir)
	if err != nil {
		return err
	}
	file, err := lookupSecretFile(files, pos[0])
	if err != nil {
		return err
	}
	current := ""
	if data, err := os.ReadFile(file.Path); err == nil {
		current = manifest.SecretVersion(data)
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("secrets revoke: %w", err)
	}
	history, herr := secrets.History(ctx, files.Dir, file.File)
	if herr != nil && len(versions) == 0 {
		return withHint(herr, ExitConfig, "keep the fleet in git (its history is where the earlier versions are), or name them with --version sha256:HEX")
	}
	if herr != nil {
		fmt.Fprintf(e.stderr, "deploy: %v; revoking only the --version values\n", herr)
	}
	var revoke []string
	for _, v := range slices.Concat(history, versions) {
		if slices.Contains(revoke, v) {
			continue
		}
		if v == current && !force {
			if slices.Contains(versions, v) {
				return withHint(fmt.Errorf("secrets revoke: %s is the current version of %s", v, file.File), ExitConfig,
					fmt.Sprintf("rotate it first (deploy secrets edit %s), then revoke the old version; or pass --force", pos[0]))
			}
			continue // the current version stays valid
		}
		revoke = append(revoke, v)
	}
	if len(revoke) == 0 {
		return withHint(fmt.Errorf("secrets revoke: %s has no version but the current one %s", file.File, current), ExitConfig,
			fmt.Sprintf("rotate it first (deploy secrets edit %s) and commit, then revoke: every earlier version is revoked, the current one stays valid", pos[0]))
	}
	now := time.Now().UTC().Truncate(time.Second)
	rs := make([]secrets.Revocation, len(revoke))
	for i, v := range revoke {
		rs[i] = secrets.Revocation{Version: v, File: file.File, Time: now}
	}
	added, err := secrets.AddRevocations(files.Dir, rs)
	if err != nil {
		return withHint(fmt.Errorf("secrets revoke: %w", err), ExitConfig, "fix "+secrets.RevokedFile+" (lines \"sha256:HEX FILE TIME\"); nothing was changed")
	}
	for _, r := range added {
		fmt.Fprintf(e.stdout, "%s %s\n", r.Version, r.File)
	}
	fmt.Fprintf(e.stderr, "deploy: %s: %d versions revoked, %d revoked already\n", file.File, len(added), len(revoke)-len(added))
	switch {
	case current != "" && slices.Contains(revoke, current):
		fmt.Fprintf(e.stderr, "deploy: %s: the current version %s is revoked too: the fleet does not build until you rotate it (deploy secrets edit %s)\n", file.File, current, pos[0])
	case current != "":
		fmt.Fprintf(e.stderr, "deploy: %s: the current version %s stays valid\n", file.File, current)
	}
	if len(added) > 0 {
		fmt.Fprintf(e.stderr, "deploy: hint: commit %s and deploy: hosts record the revocation from their next generation on, and then install none of these versions, not even by a rollback\n", secrets.RevokedFile)
	}
	return nil
}
