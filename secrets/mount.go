package secrets

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

const (
	ramfsMagic = 0x858458f6
	tmpfsMagic = 0x01021994
)

// openRunDir creates RunDir (0711) if needed and checks that it is a real
// directory owned by us and writable by nobody else. It adds the traverse
// bits (0011) when they are missing: owners of secrets other than root must
// be able to reach RunDir/secrets/NAME. It never adds read bits.
func openRunDir(runDir string, logf func(string, ...any)) (int, error) {
	fi, err := os.Lstat(runDir)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(runDir), 0o755); err != nil {
			return -1, fmt.Errorf("install secrets: create %q: %w", filepath.Dir(runDir), err)
		}
		if err := os.Mkdir(runDir, 0o711); err != nil && !errors.Is(err, os.ErrExist) {
			return -1, fmt.Errorf("install secrets: create run directory %q: %w", runDir, err)
		}
		fi, err = os.Lstat(runDir)
	}
	if err != nil {
		return -1, fmt.Errorf("install secrets: %w", err)
	}
	if !fi.IsDir() {
		return -1, fmt.Errorf("install secrets: run directory %q is not a directory (%v)", runDir, fi.Mode().Type())
	}
	fd, err := unix.Open(runDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("install secrets: open run directory %q: %w", runDir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("install secrets: stat %q: %w", runDir, err)
	}
	switch {
	case int(st.Uid) != os.Geteuid():
		err = fmt.Errorf("install secrets: run directory %q is owned by uid %d, not %d", runDir, st.Uid, os.Geteuid())
	case st.Mode&0o022 != 0:
		err = fmt.Errorf("install secrets: run directory %q is writable by group or others (mode %04o)", runDir, st.Mode&0o7777)
	case st.Mode&0o011 != 0o011:
		mode := st.Mode&0o7777 | 0o011
		if err = unix.Fchmod(fd, mode); err == nil {
			logf("secrets: %s: mode %04o so that secret owners can reach their files", runDir, mode)
		} else {
			err = fmt.Errorf("install secrets: chmod %q: %w", runDir, err)
		}
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// openSecretsFS returns a descriptor of RunDir/secrets.d, mounting a ramfs
// there (nodev, nosuid, noexec, mode 0711) unless it is a ramfs mount point
// with those options already. A ramfs, because its pages are never swapped
// out to disk; a tmpfs (which may be) only with opts.AllowTmpfs, and then
// with a warning.
func openSecretsFS(runFD int, runDir string, opts *InstallOptions) (int, error) {
	logf := opts.logf
	path := filepath.Join(runDir, generationsDir)
	if err := unix.Mkdirat(runFD, generationsDir, 0o711); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, fmt.Errorf("install secrets: create %q: %w", path, err)
	}
	for attempt := 0; ; attempt++ {
		fd, err := unix.Openat(runFD, generationsDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, fmt.Errorf("install secrets: open %q (it must be a directory, not a symlink): %w", path, err)
		}
		mounted, tmpfs, err := checkSecretsMount(runFD, fd, path)
		if err == nil && mounted && tmpfs {
			if !opts.AllowTmpfs {
				err = fmt.Errorf("install secrets: %q is a tmpfs, whose pages can be swapped to disk: set secrets_allow_tmpfs = true for this host to accept that, or unmount it so that a ramfs is mounted", path)
			} else if !opts.quietTmpfs {
				opts.warnf("secrets: %s is a tmpfs: decrypted secrets can be swapped to disk (secrets_allow_tmpfs = true)", path)
			}
		}
		if err != nil || mounted {
			if err != nil {
				unix.Close(fd)
				return -1, err
			}
			return fd, nil
		}
		if attempt > 0 {
			unix.Close(fd)
			return -1, fmt.Errorf("install secrets: %q is still not a mount point after mounting", path)
		}
		// Mount through the descriptor, so that nothing can swap the
		// directory for a symlink between the check and the mount.
		target := "/proc/self/fd/" + strconv.Itoa(fd)
		if _, err := os.Stat(target); err != nil {
			target = path
		}
		flags := uintptr(unix.MS_NODEV | unix.MS_NOSUID | unix.MS_NOEXEC)
		err = mountRamfs(target)
		if err != nil {
			if !opts.AllowTmpfs {
				unix.Close(fd)
				return -1, fmt.Errorf("install secrets: mount ramfs on %q: %w (a tmpfs would work, but its pages can be swapped to disk: set secrets_allow_tmpfs = true for this host to allow it)", path, err)
			}
			if err2 := unix.Mount("deploy-secrets", target, "tmpfs", flags, "mode=0711,size=64m"); err2 != nil {
				unix.Close(fd)
				return -1, fmt.Errorf("install secrets: mount ramfs on %q: %w (tmpfs: %v)", path, err, err2)
			}
			unix.Close(fd)
			logf("secrets: mounting a ramfs on %s failed: %v", path, err)
			logf("secrets: mounted tmpfs on %s (nodev,nosuid,noexec)", path)
			continue // the next round checks it, and warns
		}
		unix.Close(fd)
		logf("secrets: mounted ramfs on %s (nodev,nosuid,noexec)", path)
	}
}

// mountRamfs mounts the secrets' ramfs on target; a variable so that
// tests can make it fail as it does where ramfs is not available.
var mountRamfs = func(target string) error {
	return unix.Mount("deploy-secrets", target, "ramfs", unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0711")
}

// checkSecretsMount reports whether fd (RunDir/secrets.d) is a mount point
// fit for plaintext, and whether it is a tmpfs; a mount point that is not
// fit is an error.
func checkSecretsMount(runFD, fd int, path string) (mounted, tmpfs bool, err error) {
	var parent, st unix.Stat_t
	if err := unix.Fstat(runFD, &parent); err != nil {
		return false, false, fmt.Errorf("install secrets: stat run directory: %w", err)
	}
	if err := unix.Fstat(fd, &st); err != nil {
		return false, false, fmt.Errorf("install secrets: stat %q: %w", path, err)
	}
	if st.Dev == parent.Dev {
		return false, false, nil
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return false, false, fmt.Errorf("install secrets: statfs %q: %w", path, err)
	}
	if fs.Type != ramfsMagic && fs.Type != tmpfsMagic {
		return false, false, fmt.Errorf("install secrets: %q is a mount point of file system type %#x, not ramfs or tmpfs", path, fs.Type)
	}
	const want = unix.ST_NODEV | unix.ST_NOSUID | unix.ST_NOEXEC
	if fs.Flags&want != want {
		return false, false, fmt.Errorf("install secrets: %q is mounted without nodev,nosuid,noexec (flags %#x)", path, fs.Flags)
	}
	if int(st.Uid) != os.Geteuid() || st.Mode&0o022 != 0 {
		return false, false, fmt.Errorf("install secrets: %q must be owned by uid %d and writable by nobody else (uid %d, mode %04o)",
			path, os.Geteuid(), st.Uid, st.Mode&0o7777)
	}
	return true, fs.Type == tmpfsMagic, nil
}
