package secrets

import (
	"context"
	"errors"

	"github.com/declarative/deploy/manifest"
)

// InstallOptions says which secrets of which generation to decrypt, and
// where.
type InstallOptions struct {
	// RunDir is the agent's runtime directory (/run/deploy). Secrets of
	// generation N go to RunDir/secrets.d/N/; RunDir/secrets is switched to
	// it atomically.
	RunDir string
	// Generation is the generation number the secrets belong to.
	Generation int
	// Secrets are the manifest's secrets; Source is the ciphertext's store
	// path (logical), Path the destination the services use.
	Secrets []manifest.Secret
	// RealPath maps a logical store path to where it is on this disk.
	RealPath func(storePath string) string
	// Identities are the private key files to decrypt with (default
	// /etc/ssh/ssh_host_ed25519_key).
	Identities []string
	// Logf, if set, receives a line per step (never a secret's content).
	Logf func(format string, args ...any)
}

// ErrNotImplemented is returned by [Install] for a non-empty secret list
// until decryption lands (issue "Secrets").
var ErrNotImplemented = errors.New("secrets: decryption on the target is not implemented yet")

// Install decrypts the secrets of one generation into RunDir/secrets.d/N/
// and atomically points RunDir/secrets at it. On any error the previous
// generation's secrets stay in place.
func Install(ctx context.Context, opts InstallOptions) error {
	if len(opts.Secrets) > 0 {
		return ErrNotImplemented
	}
	return nil
}
