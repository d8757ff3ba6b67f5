package vmtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultCacheDir is where the image cache and run state live unless
// $DEPLOY_VMTEST_CACHE or [WithCacheDir] says otherwise.
const DefaultCacheDir = "/var/cache/deploy-vmtest"

// The image recipe. Changing any of it changes the image's cache key.
const (
	imageSuite   = "bookworm"
	imageVariant = "minbase"
	// imageRevision counts changes to customizeImage.
	imageRevision = "4"
)

var imagePackages = []string{"systemd", "systemd-sysv", "openssh-server", "dbus", "iproute2", "udev", "procps", "sudo", "nftables", "rsync"}

// maskedUnits do nothing useful in a test host and cost memory or start
// background work (apt downloads) in the middle of a test.
var maskedUnits = []string{
	"console-getty.service",
	"getty@.service",
	"container-getty@.service",
	"apt-daily.timer",
	"apt-daily-upgrade.timer",
	"dpkg-db-backup.timer",
	"e2scrub_all.timer",
	"fstrim.timer",
}

// imageFiles are written into the image after debootstrap.
var imageFiles = map[string]string{
	"etc/ssh/sshd_config.d/vmtest.conf": `# Written by deploy's vmtest: each host gets its own ed25519 key.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
MaxStartups 100:30:200
`,
	"etc/systemd/system/vmtest-network.service": `# Written by deploy's vmtest: the host's address, from its own layer.
[Unit]
Description=vmtest: address of eth0
DefaultDependencies=no
Before=network-pre.target shutdown.target
Wants=network-pre.target
Conflicts=shutdown.target
ConditionPathExists=/etc/vmtest/network.env

[Service]
Type=oneshot
RemainAfterExit=yes
EnvironmentFile=/etc/vmtest/network.env
ExecStart=/usr/sbin/ip link set dev eth0 up
ExecStart=/usr/sbin/ip address replace ${ADDRESS} dev eth0

[Install]
WantedBy=sysinit.target
`,
	"etc/systemd/journald.conf.d/vmtest.conf": `# Written by deploy's vmtest: the console is the host's log file.
[Journal]
ForwardToConsole=yes
MaxLevelConsole=info
SystemMaxUse=32M
`,
}

// imageKey names the image by its recipe.
func imageKey() string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n%s\n", imageSuite, imageVariant, imageRevision,
		strings.Join(imagePackages, ","), strings.Join(maskedUnits, ","))
	for _, k := range sortedKeys(imageFiles) {
		fmt.Fprintf(h, "%s\n%s\n", k, imageFiles[k])
	}
	return imageSuite + "-" + hex.EncodeToString(h.Sum(nil))[:12]
}

// ensureImage returns the root filesystem of the cached image, building it
// first if no process has yet. Builders take turns under an flock; the
// image appears by an atomic rename only when complete. Only a build looks
// for the [Mirror].
func ensureImage(ctx context.Context, cache string, logf func(string, ...any)) (string, error) {
	images := filepath.Join(cache, "images")
	key := imageKey()
	final := filepath.Join(images, key)
	rootfs := filepath.Join(final, "rootfs")
	if _, err := os.Stat(rootfs); err == nil {
		return rootfs, nil
	}
	if err := os.MkdirAll(images, 0o755); err != nil {
		return "", fmt.Errorf("create image cache: %w", err)
	}
	lock, err := lockFile(ctx, final+".lock", logf)
	if err != nil {
		return "", fmt.Errorf("build image: %w", err)
	}
	defer lock.Close()
	if _, err := os.Stat(rootfs); err == nil {
		return rootfs, nil // another process built it while we waited
	}

	mirror, err := Mirror()
	if err != nil {
		return "", fmt.Errorf("build image: %w", err)
	}
	tmp := final + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", fmt.Errorf("build image: remove partial build: %w", err)
	}
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return "", fmt.Errorf("build image: %w", err)
	}
	start := time.Now()
	logf("vmtest: building image %s with debootstrap from %s (once per machine)", key, mirror)
	logPath := final + ".log"
	if err := debootstrap(ctx, filepath.Join(tmp, "rootfs"), mirror, logPath, imagePackages); err != nil {
		return "", err
	}
	if err := customizeImage(filepath.Join(tmp, "rootfs")); err != nil {
		return "", fmt.Errorf("build image: %w", err)
	}
	if err := syncDir(tmp); err != nil {
		return "", fmt.Errorf("build image: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("build image: %w", err)
	}
	logf("vmtest: built image %s in %v", key, time.Since(start).Round(time.Second))
	return rootfs, nil
}

func debootstrap(ctx context.Context, target, mirror, logPath string, packages []string) error {
	logFile, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("debootstrap: %w", err)
	}
	defer logFile.Close()
	cmd := exec.CommandContext(ctx, "debootstrap",
		"--variant="+imageVariant,
		"--include="+strings.Join(packages, ","),
		imageSuite, target, mirror)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	// debootstrap runs dpkg and friends in a chroot: cancel the whole group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("debootstrap %s into %q failed (log %s): %w\n%s", imageSuite, target, logPath, err, tailFile(logPath, 20))
	}
	return nil
}

// customizeImage turns a fresh debootstrap tree into the shared image that
// every host's layer starts from. Per-host files (keys, hostname,
// machine-id) are written into each host's own layer instead.
func customizeImage(root string) error {
	// No host keys: each host gets its own.
	keys, _ := filepath.Glob(filepath.Join(root, "etc/ssh/ssh_host_*"))
	for _, k := range keys {
		if err := os.Remove(k); err != nil {
			return err
		}
	}
	for _, f := range []string{"etc/hostname"} {
		if err := os.Remove(filepath.Join(root, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	// An empty machine-id would make systemd generate one per boot;
	// each host's layer has its own.
	if err := os.WriteFile(filepath.Join(root, "etc/machine-id"), nil, 0o444); err != nil {
		return err
	}
	for _, name := range sortedKeys(imageFiles) {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(imageFiles[name]), 0o644); err != nil {
			return err
		}
	}
	wants := filepath.Join(root, "etc/systemd/system/sysinit.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return err
	}
	if err := os.Symlink("../vmtest-network.service", filepath.Join(wants, "vmtest-network.service")); err != nil {
		return err
	}
	for _, u := range maskedUnits {
		p := filepath.Join(root, "etc/systemd/system", u)
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := os.Symlink("/dev/null", p); err != nil {
			return err
		}
	}
	// Useless in a throwaway host and 30 MB of the image's reads.
	for _, d := range []string{"var/cache/apt", "var/lib/apt/lists"} {
		entries, _ := os.ReadDir(filepath.Join(root, d))
		for _, e := range entries {
			if err := os.RemoveAll(filepath.Join(root, d, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// syncDir flushes the file system that holds dir (syncfs(2)), so the image
// is on disk before it is renamed into place.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }

// tailFile returns the last n lines of a file, for error messages.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return tailLines(b, n)
}

func tailLines(b []byte, n int) string {
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
