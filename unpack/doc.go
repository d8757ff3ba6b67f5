// Package unpack turns archives and OCI image layers into store paths,
// without ever writing a path taken from an archive to the disk.
//
// # The tree
//
// A [Tree] is a file tree held in memory: directories, symbolic links and
// regular files whose contents wait in a spool file. Archives are applied
// to it entry by entry ([Tree.ApplyTar], [Tree.ApplyZip], [Tree.ApplyFile]);
// an entry never reaches the file system while it is applied, so no name,
// link or symlink in an archive can make anything be written outside the
// tree. The finished tree is serialised as a NAR and imported by the store
// ([Tree.AddToStore]), whose restorer writes it with directory-relative,
// O_NOFOLLOW operations: the same safe path every received closure takes.
//
// Only what a NAR holds survives: the file type, the executable bit and the
// contents. Owners, permission bits other than executable, set-user-ID
// bits, extended attributes, capabilities and times are dropped; hard links
// become copies. (OCI images keep their layers as blobs in the store, and
// package imageroot applies them with all of that on the host; this package
// only flattens an image for the builder's checks.)
//
// # Hostile entries
//
// [Options.Layer] selects between the two policies:
//
//   - Archives (release tarballs, zip files) are strict: an entry whose
//     name is absolute or leaves the root with "..", a hard link to a path
//     outside the archive or to nothing, a device node, a FIFO, and an entry
//     below a symbolic link are refused with an [EntryError] that names the
//     entry.
//   - OCI image layers follow what container runtimes do: absolute names
//     are taken relative to the root, intermediate symbolic links are
//     resolved inside the root (never outside it), and device nodes under
//     /dev and FIFOs, which a store path cannot hold, are skipped and listed
//     in [Tree.Skipped]; a device node elsewhere is refused, as the host
//     refuses it when it realizes the image (package imageroot). Names that
//     leave the root are refused there too.
//
// # Whiteouts
//
// In an OCI layer, ".wh.NAME" removes NAME and ".wh..wh..opq" hides every
// entry of its directory that lower layers made. Both apply only to lower
// layers, whatever order the entries of a layer come in: an entry the same
// layer adds before or after its directory's opaque marker stays. This is
// the case go-containerregistry's mutate.Extract gets wrong (issue #1897).
package unpack
