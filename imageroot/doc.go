// Package imageroot realizes an OCI image's root filesystem on a host from
// its layer blobs, keeping what a store path cannot hold: owners, modes
// (set-user-ID, set-group-ID and sticky bits included), extended attributes
// (security.capability among them), modification times, hard links and
// FIFOs.
//
// # Applying a layer
//
// [ApplyLayer] reads one layer (a tar stream, gzip- or zstd-compressed or
// not) and applies it to a directory the way a container runtime does:
//
//   - Every path is resolved below the root with openat2(2) and
//     RESOLVE_IN_ROOT, so a symbolic link in the tree (an absolute one
//     included) resolves inside the root, never outside it; every change is
//     made relative to an open parent directory, and a final symbolic link
//     is never followed. Names that leave the root with ".." are refused;
//     absolute names are taken relative to the root.
//   - ".wh.NAME" removes NAME, and ".wh..wh..opq" empties its directory, of
//     what lower layers made only: an entry the same layer adds, before or
//     after the marker, stays.
//   - Owners are the tar header's numeric IDs (names are ignored, as
//     runtimes do without user namespaces). A file's owner is set before its
//     mode and its xattrs, because chown(2) clears set-ID bits and file
//     capabilities.
//   - security.selinux is not applied (the host labels its own files);
//     every other xattr is, and one the file system does not support
//     (EOPNOTSUPP) is skipped and listed, but for security.capability,
//     whose failure fails the layer.
//   - Device nodes are skipped under /dev (a service's MountAPIVFS= mounts a
//     private /dev over it) and refused elsewhere.
//
// # Realizing a root
//
// [Realize] applies an image's layers in order into a temporary directory,
// adds the mount points a systemd unit's RootDirectory= needs, makes it
// durable with syncfs(2) and renames it into place, so that an interrupted
// realization leaves no root (the next one starts over) or a complete one.
package imageroot
