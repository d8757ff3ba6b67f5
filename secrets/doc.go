// Package secrets handles age-encrypted secrets: host-key recipients, editing
// and rekeying on the operator's side, and decryption into ramfs on the target.
// Plaintext never reaches the store, the operator's disk, logs or argv.
//
// # Target side
//
// [Install] decrypts one generation's secrets with the host's SSH key into
// RunDir/secrets.d/N on a ramfs (nodev, nosuid, noexec), each file created
// with its final owner and mode before its first byte and renamed in only
// after a clean end of the age stream, then switches RunDir/secrets to it
// atomically and prunes older generations ([Prune]). It is idempotent and is
// also what rollback and boot call; [Current] says which generation the link
// names.
//
// # Operator side
//
// A secret file's recipients ([Recipient]) are the SSH ed25519 host keys of
// the hosts that use it and the fleet's admin keys: [FleetFiles] turns the
// fleet's secret uses ([Use]) and admins into its files ([File]), with the
// problems that leave a file's recipients incomplete; [Files.Lookup] finds
// a file by secret name or path, and [File.Inspect] says whether it is
// current or must be rekeyed. [Edit] runs an editor on a private tmpfs copy
// and re-encrypts; [Rekey] re-encrypts to a new recipient set;
// [ReadStanzas] and [Check] tell, without decrypting, whether a file is
// encrypted to exactly its current recipients. See docs/secrets.md.
package secrets
