// Package oci brings OCI (Docker) images into the store and takes system
// closures out as images, with github.com/google/go-containerregistry and
// no container runtime.
//
// # Images in
//
// A [Puller] resolves an image reference to the digest of the manifest for
// a platform ([Puller.Resolve], what `deploy lock` records) and realizes a
// pinned image as one store path per layer plus one for the image
// ([Puller.Realize]):
//
//	<hash>-oci-layer-<blob digest prefix>/
//	  layer           the layer blob as the registry served it (its SHA-256 is the digest)
//	<hash>-oci-<manifest digest prefix>/   (references its layer paths)
//	  manifest.json   the image manifest, byte for byte (its SHA-256 is the digest)
//	  config.json     the image configuration, byte for byte
//	  layers          "DIGEST LAYERPATH" per layer, bottom first ([ParseLayers])
//
// A store path cannot hold owners, modes, set-ID bits, xattrs or hard
// links, but the tar headers in a layer path do: the agent applies them when
// it realizes the image's root on the host (package imageroot). Layers that
// two images share are one store path, copied and stored once.
//
// Layer blobs are cached by digest and verified against it; a realized
// image is remembered by manifest digest, so the same digest gives the same
// store paths without downloading anything. Credentials come from
// ~/.docker/config.json and its credential helpers, as docker and crane
// find them ([authn.DefaultKeychain]); plain HTTP is refused unless the
// caller allows it for that image.
//
// For the builder's checks (the image's user, its command on PATH, mount
// points), [Image.RootDir] is the root flattened in the cache (types,
// executable bits and contents, package unpack), with the directories and
// files a service's RootDirectory= is mounted over: /dev, /proc, /sys,
// /run, /tmp, /var/tmp, /root, /home, /usr, /etc/resolv.conf and /etc/hosts
// (the agent adds the same ones to the realized root).
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
