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
// there (nodev, nosuid, noexec, mode 0711) unless it is a ramfs or tmpfs
// mount point with those options already. ramfs is preferred over tmpfs
// because its pages are never swapped out to disk.
func openSecretsFS(runFD int, runDir string, logf func(string, ...any)) (int, error) {
	path := filepath.Join(runDir, generationsDir)
	if err := unix.Mkdirat(runFD, generationsDir, 0o711); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, fmt.Errorf("install secrets: create %q: %w", path, err)
	}
	for attempt := 0; ; attempt++ {
		fd, err := unix.Openat(runFD, generationsDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, fmt.Errorf("install secrets: open %q (it must be a directory, not a symlink): %w", path, err)
		}
		mounted, err := checkSecretsMount(runFD, fd, path)
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
		fstype := "ramfs"
		err = unix.Mount("deploy-secrets", target, "ramfs", flags, "mode=0711")
		if err != nil {
			fstype = "tmpfs"
			if err2 := unix.Mount("deploy-secrets", target, "tmpfs", flags, "mode=0711,size=64m"); err2 != nil {
				unix.Close(fd)
				return -1, fmt.Errorf("install secrets: mount ramfs on %q: %w (tmpfs: %v)", path, err, err2)
			}
		}
		unix.Close(fd)
		logf("secrets: mounted %s on %s (nodev,nosuid,noexec)", fstype, path)
	}
}

// checkSecretsMount reports whether fd (RunDir/secrets.d) is a mount point
// fit for plaintext; a mount point that is not is an error.
func checkSecretsMount(runFD, fd int, path string) (bool, error) {
	var parent, st unix.Stat_t
	if err := unix.Fstat(runFD, &parent); err != nil {
		return false, fmt.Errorf("install secrets: stat run directory: %w", err)
	}
	if err := unix.Fstat(fd, &st); err != nil {
		return false, fmt.Errorf("install secrets: stat %q: %w", path, err)
	}
	if st.Dev == parent.Dev {
		return false, nil
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return false, fmt.Errorf("install secrets: statfs %q: %w", path, err)
	}
	if fs.Type != ramfsMagic && fs.Type != tmpfsMagic {
		return false, fmt.Errorf("install secrets: %q is a mount point of file system type %#x, not ramfs or tmpfs", path, fs.Type)
	}
	const want = unix.ST_NODEV | unix.ST_NOSUID | unix.ST_NOEXEC
	if fs.Flags&want != want {
		return false, fmt.Errorf("install secrets: %q is mounted without nodev,nosuid,noexec (flags %#x)", path, fs.Flags)
	}
	if int(st.Uid) != os.Geteuid() || st.Mode&0o022 != 0 {
		return false, fmt.Errorf("install secrets: %q must be owned by uid %d and writable by nobody else (uid %d, mode %04o)",
			path, os.Geteuid(), st.Uid, st.Mode&0o7777)
	}
	return true, nil
}
