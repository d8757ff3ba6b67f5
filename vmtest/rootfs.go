package vmtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Rootfs returns a Debian root filesystem made by debootstrap
// --variant=minbase with the given extra packages, for tests that need real
// programs with their libraries (an nginx image, say). It is built once per
// machine and package list into the image cache ($DEPLOY_VMTEST_CACHE,
// images/rootfs-<hash>/rootfs) from the [Mirror], under the same
// flock and atomic rename as the hosts' image, without its customization
// apart from emptying apt's caches. It needs root and debootstrap
// ([Available] says what is missing).
func Rootfs(ctx context.Context, packages []string, logf func(format string, args ...any)) (string, error) {
	if err := Available(); err != nil {
		return "", err
	}
	cfg := newConfig(nil)
	h := sha256.New()
	fmt.Fprintf(h, "rootfs\n%s\n%s\n%s\n", imageSuite, imageVariant, strings.Join(packages, ","))
	final := filepath.Join(cfg.cacheDir, "images", "rootfs-"+hex.EncodeToString(h.Sum(nil))[:12])
	rootfs := filepath.Join(final, "rootfs")
	if _, err := os.Stat(rootfs); err == nil {
		return rootfs, nil
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return "", fmt.Errorf("rootfs: %w", err)
	}
	lock, err := lockFile(ctx, final+".lock", logf)
	if err != nil {
		return "", fmt.Errorf("rootfs: %w", err)
	}
	defer lock.Close()
	if _, err := os.Stat(rootfs); err == nil {
		return rootfs, nil
	}
	mirror, err := Mirror()
	if err != nil {
		return "", fmt.Errorf("rootfs: %w", err)
	}
	tmp := final + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", fmt.Errorf("rootfs: remove partial build: %w", err)
	}
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return "", fmt.Errorf("rootfs: %w", err)
	}
	start := time.Now()
	logf("vmtest: building root filesystem %s (%s) with debootstrap from %s (once per machine)", filepath.Base(final), strings.Join(packages, ","), mirror)
	if err := debootstrap(ctx, filepath.Join(tmp, "rootfs"), mirror, final+".log", packages); err != nil {
		return "", err
	}
	for _, d := range []string{"var/cache/apt", "var/lib/apt/lists"} {
		entries, _ := os.ReadDir(filepath.Join(tmp, "rootfs", d))
		for _, e := range entries {
			if err := os.RemoveAll(filepath.Join(tmp, "rootfs", d, e.Name())); err != nil {
				return "", fmt.Errorf("rootfs: %w", err)
			}
		}
	}
	if err := syncDir(tmp); err != nil {
		return "", fmt.Errorf("rootfs: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("rootfs: %w", err)
	}
	logf("vmtest: built root filesystem %s in %v", filepath.Base(final), time.Since(start).Round(time.Second))
	return rootfs, nil
}
