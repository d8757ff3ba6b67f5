// Package closure implements the content-addressed store: store paths, the
// local and target stores, closure computation, import and garbage collection.
//
// # Format
//
// The store is byte-compatible with Nix: archives are NAR (see package
// [github.com/declarative/deploy/closure/nar]) and store paths follow Nix's
// content-addressed "source" recipe (see [MakeSourcePath]), so a real
// nix-store gives golden vectors for both.
//
// # Validity
//
// A path is valid iff its metadata file exists in the store's database
// directory. Metadata is written (temp file, fsync, rename, directory fsync)
// only after the content is complete, verified against its NAR hash and size,
// fsynced, and only when every reference is already valid. An interrupted
// import therefore never leaves a valid partial path; its leftovers are
// removed by the next import or by [Store.GC].
package closure
