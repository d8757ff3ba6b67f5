// Package oci brings OCI (Docker) images into the store and takes system
// closures out as images, with github.com/google/go-containerregistry and
// no container runtime.
//
// # Images in
//
// A [Puller] resolves an image reference to the digest of the manifest for
// a platform ([Puller.Resolve], what `deploy lock` records) and realizes a
// pinned image as one store path ([Puller.Realize]):
//
//	<hash>-oci-<digest prefix>/
//	  manifest.json   the image manifest, byte for byte (its SHA-256 is the digest)
//	  config.json     the image configuration, byte for byte
//	  rootfs/         the layers applied in order (package unpack)
//
// Layer blobs are cached by digest and verified against it; a realized
// image is remembered by manifest digest, so the same digest gives the same
// store path without downloading anything. Credentials come from
// ~/.docker/config.json and its credential helpers, as docker and crane
// find them ([authn.DefaultKeychain]); plain HTTP is refused unless the
// caller allows it for that image.
//
// The root filesystem gets what a service's RootDirectory= needs to be
// mounted over without writing into the store path, as systemd's portable
// services require of their images: directories /dev, /proc, /sys, /run,
// /tmp, /var/tmp, /root, /home and /usr, and /etc/resolv.conf and
// /etc/hosts as regular files (an image's symbolic links there are replaced
// by empty files).
//
// # Images out
//
// [ClosureImage] makes an image of store paths: one uncompressed layer per
// path, in closure order, each holding the path under its store directory
// with fixed owners, modes and times, so the same closure always gives the
// same image digest and two images that share paths share layers.
// [WriteArchive] writes an image as a tar that both `docker load` and OCI
// tools read; [Push] sends it to a registry.
package oci
