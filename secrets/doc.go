// Package secrets handles age-encrypted secrets: host-key recipients, editing
// and rekeying on the operator's side, and decryption into ramfs on the target.
// Plaintext never reaches the store, the operator's disk, logs or argv.
package secrets
