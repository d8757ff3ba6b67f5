package activation

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
	"github.com/declarative/deploy/manifest"
	"golang.org/x/sys/unix"
)

// Drift is what `deploy-agent drift --json` prints.
type Drift = agentapi.Drift

// DriftOptions tune [Layout.Drift].
type DriftOptions struct {
	// VerifyStore rehashes every store path of the current system's
	// closure; otherwise each is only checked to be present.
	VerifyStore bool
}

// Drift compares the machine's live state with the current generation's
// manifest: users and groups (and their supplementary memberships),
// managed directories, files and symlinks (missing, other type, content,
// owner, mode, link target), decrypted secrets (missing, owner, mode;
// never their content), sysctls, the firewall's nftables table, units
// (unit file link, masked, and those that should run and are not active),
// the host name, and the store paths of the current system's closure. It
// changes nothing.
func (l Layout) Drift(ctx context.Context, opts DriftOptions) (*Drift, error) {
	d := &Drift{V: agentapi.Version, Items: []agentapi.DriftItem{}}
	cur, err := l.CurrentGeneration()
	if err != nil {
		return nil, err
	}
	if cur == 0 {
		return d, nil
	}
	system := l.currentSystem()
	d.Generation, d.System = cur, system
	store := closure.NewTargetStore(l.withDefaults().StateDir)
	add := func(kind, name, problem, want, got string) {
		d.Items = append(d.Items, agentapi.DriftItem{Kind: kind, Name: name, Problem: problem, Want: want, Got: got})
	}
	if ok, err := store.Valid(system); err != nil || !ok {
		// Without the system there is no manifest to compare with: the
		// store check below names what is missing.
		add(agentapi.DriftStore, system, "missing", "", "")
		return d, nil
	}
	m, err := ReadManifest(system, store.RealPath)
	if err != nil {
		return nil, err
	}
	accountDrift(m, add)
	membershipsDrift(m, add)
	for _, dir := range m.Directories {
		st, err := lstatPath(dir.Path)
		if err != nil {
			add(agentapi.DriftDirectory, dir.Path, problemOf(err), "", err.Error())
			continue
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			add(agentapi.DriftDirectory, dir.Path, "type", "directory", typeName(st.Mode))
			continue
		}
		ownerModeDrift(agentapi.DriftDirectory, dir.Path, st, dir.Owner, dir.Group, dir.Mode, add)
	}
	for _, f := range m.Files {
		fileDrift(f, store.RealPath(f.Source), add)
	}
	for _, s := range m.Symlinks {
		got, err := os.Readlink(s.Path)
		switch {
		case err != nil:
			add(agentapi.DriftSymlink, s.Path, problemOf(err), s.Target, "")
		case got != s.Target:
			add(agentapi.DriftSymlink, s.Path, "target", s.Target, got)
		}
	}
	for _, s := range m.Secrets {
		// The secrets link and the generation's directory are followed:
		// they are the agent's own.
		var st unix.Stat_t
		if err := unix.Stat(s.Path, &st); err != nil {
			add(agentapi.DriftSecret, s.Path, problemOf(err), "", "")
			continue
		}
		ownerModeDrift(agentapi.DriftSecret, s.Path, &st, s.Owner, s.Group, s.Mode, add)
	}
	kernelDrift(ctx, m, store.RealPath, add)
	if err := l.unitDrift(ctx, m, store.RealPath, add); err != nil {
		return nil, err
	}
	hostnameOf(m, add)
	infos, err := store.Closure(system)
	if err != nil {
		add(agentapi.DriftStore, system, "corrupt", "", err.Error())
		return d, nil
	}
	var paths []string
	for _, pi := range infos {
		paths = append(paths, pi.Path)
	}
	if opts.VerifyStore {
		d.StoreVerified = true
		problems, err := store.VerifyPaths(ctx, paths)
		if err != nil {
			return nil, err
		}
		// A path whose reference is itself reported is not reported
		// again for it.
		reported := map[string]bool{}
		for _, p := range problems {
			var ir *closure.InvalidReferenceError
			if !errors.As(p.Err, &ir) {
				reported[p.Path] = true
			}
		}
		for _, p := range problems {
			var ir *closure.InvalidReferenceError
			if errors.As(p.Err, &ir) && reported[ir.Ref] {
				continue
			}
			problem := "corrupt"
			if errors.Is(p.Err, fs.ErrNotExist) {
				problem = "missing"
			}
			add(agentapi.DriftStore, p.Path, problem, "", p.Err.Error())
		}
		return d, nil
	}
	for _, p := range paths {
		if ok, err := store.Valid(p); err != nil {
			add(agentapi.DriftStore, p, "corrupt", "", err.Error())
		} else if !ok {
			add(agentapi.DriftStore, p, "missing", "", "")
		}
	}
	return d, nil
}

type addFunc func(kind, name, problem, want, got string)

func lstatPath(p string) (*unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return nil, &fs.PathError{Op: "lstat", Path: p, Err: err}
	}
	return &st, nil
}

func problemOf(err error) string {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return "missing"
	}
	return "unreadable"
}

func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symlink"
	}
	return "special file"
}

// ownerModeDrift adds an item for a different owner (user:group) and one
// for a different mode.
func ownerModeDrift(kind, p string, st *unix.Stat_t, owner, group, mode string, add addFunc) {
	if owner != "" || group != "" {
		uid, gid, err := lookupIDs(orRoot(owner), orRoot(group))
		if err != nil {
			add(kind, p, "owner", orRoot(owner)+":"+orRoot(group), err.Error())
		} else if int(st.Uid) != uid || int(st.Gid) != gid {
			add(kind, p, "owner", orRoot(owner)+":"+orRoot(group), idNames(st.Uid, st.Gid))
		}
	}
	if mode != "" {
		want, err := parseMode(mode)
		if err == nil && st.Mode&0o7777 != want {
			add(kind, p, "mode", fmt.Sprintf("%04o", want), fmt.Sprintf("%04o", st.Mode&0o7777))
		}
	}
}

func orRoot(s string) string {
	if s == "" {
		return "root"
	}
	return s
}

// idNames renders uid:gid with names where they have them.
func idNames(uid, gid uint32) string {
	u, g := strconv.Itoa(int(uid)), strconv.Itoa(int(gid))
	if x, err := user.LookupId(u); err == nil {
		u = x.Username
	}
	if x, err := user.LookupGroupId(g); err == nil {
		g = x.Name
	}
	return u + ":" + g
}

func fileDrift(f manifest.File, src string, add addFunc) {
	st, err := lstatPath(f.Path)
	if err != nil {
		add(agentapi.DriftFile, f.Path, problemOf(err), "", "")
		return
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		add(agentapi.DriftFile, f.Path, "type", "file", typeName(st.Mode))
		return
	}
	want, err := os.ReadFile(src)
	if err != nil {
		add(agentapi.DriftFile, f.Path, "content", "", "its source "+src+" is unreadable: "+err.Error())
	} else if got, err := readNoFollow(f.Path); err != nil {
		add(agentapi.DriftFile, f.Path, "unreadable", "", err.Error())
	} else if !bytes.Equal(got, want) {
		add(agentapi.DriftFile, f.Path, "content", "", fmt.Sprintf("%d bytes differ from the generation's %d", len(got), len(want)))
	}
	ownerModeDrift(agentapi.DriftFile, f.Path, st, f.Owner, f.Group, f.Mode, add)
}

// readNoFollow reads p's content without following a symlink in its last
// component.
func readNoFollow(p string) ([]byte, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(f)
	return b.Bytes(), err
}

func accountDrift(m *manifest.Manifest, add addFunc) {
	for _, g := range m.Groups {
		got, err := user.LookupGroup(g.Name)
		if err != nil {
			add(agentapi.DriftGroup, g.Name, "missing", "", "")
			continue
		}
		if g.GID != nil && got.Gid != strconv.Itoa(*g.GID) {
			add(agentapi.DriftGroup, g.Name, "gid", strconv.Itoa(*g.GID), got.Gid)
		}
	}
	for _, u := range m.Users {
		got, err := user.Lookup(u.Name)
		if err != nil {
			add(agentapi.DriftUser, u.Name, "missing", "", "")
			continue
		}
		if u.UID != nil && got.Uid != strconv.Itoa(*u.UID) {
			add(agentapi.DriftUser, u.Name, "uid", strconv.Itoa(*u.UID), got.Uid)
		}
		if u.Group != "" {
			if g, err := user.LookupGroupId(got.Gid); err != nil || g.Name != u.Group {
				name := got.Gid
				if err == nil {
					name = g.Name
				}
				add(agentapi.DriftUser, u.Name, "group", u.Group, name)
			}
		}
		if u.Home != "" && got.HomeDir != u.Home {
			add(agentapi.DriftUser, u.Name, "home", u.Home, got.HomeDir)
		}
		if u.Shell != "" {
			if sh := passwdShell(u.Name); sh != "" && sh != u.Shell {
				add(agentapi.DriftUser, u.Name, "shell", u.Shell, sh)
			}
		}
	}
}

// unitDrift checks each unit's file link, whether it is masked, and, for
// units that should run, that they are active.
func (l Layout) unitDrift(ctx context.Context, m *manifest.Manifest, realPath func(string) string, add addFunc) error {
	if len(m.Units) == 0 {
		return nil
	}
	dir := l.withDefaults().UnitDir
	var names []string
	for _, u := range m.Units {
		p := dir + "/" + u.Name
		if got, err := os.Readlink(p); err != nil {
			add(agentapi.DriftUnit, u.Name, "unit-file", realPath(u.Source), problemOf(err))
		} else if got != realPath(u.Source) {
			add(agentapi.DriftUnit, u.Name, "unit-file", realPath(u.Source), got)
		}
		names = append(names, u.Name)
	}
	states, err := unitStates(ctx, names)
	if err != nil {
		return err
	}
	for _, u := range m.Units {
		st := states[u.Name]
		// A masked unit that should run and does not is both.
		if strings.HasPrefix(st.load, "masked") || strings.HasPrefix(st.enabled, "masked") {
			add(agentapi.DriftUnit, u.Name, "masked", "", st.enabled)
		}
		switch {
		case !u.Start:
		case st.active == "failed":
			add(agentapi.DriftUnit, u.Name, "failed", "active", st.String())
		case st.active != "active" && st.active != "reloading":
			add(agentapi.DriftUnit, u.Name, "inactive", "active", st.String())
		}
	}
	return nil
}

// unitState is what systemd says of a unit.
type unitState struct {
	load, active, sub, enabled string
}

func (s unitState) String() string { return s.active + "/" + s.sub }

// unitStates asks systemd for the load, active and enablement states of
// units, in one call.
func unitStates(ctx context.Context, names []string) (map[string]unitState, error) {
	props, err := showUnits(ctx, names, "Id", "LoadState", "ActiveState", "SubState", "UnitFileState")
	if err != nil {
		return nil, err
	}
	states := map[string]unitState{}
	for i, p := range props {
		// Each block names its unit (Id), which is the name asked unless
		// that is an alias.
		if id := p["Id"]; id != "" && id != names[i] && slices.Contains(names, id) {
			return nil, fmt.Errorf("systemctl show: the answer for %q came for %q", names[i], id)
		}
		states[names[i]] = unitState{load: p["LoadState"], active: p["ActiveState"], sub: p["SubState"], enabled: p["UnitFileState"]}
	}
	return states, nil
}

// showUnits asks systemd for properties of units in one call
// (`systemctl show -p P... -- UNIT...`), whose answer is one block per
// unit, in the order asked, separated by blank lines: the properties of
// each unit, in order.
func showUnits(ctx context.Context, names []string, props ...string) ([]map[string]string, error) {
	args := []string{"show"}
	for _, p := range props {
		args = append(args, "-p", p)
	}
	out, err := output(ctx, "systemctl", append(append(args, "--"), names...)...)
	if err != nil {
		return nil, fmt.Errorf("systemctl show %s: %w", strings.Join(names, " "), err)
	}
	blocks := strings.Split(strings.TrimSpace(out), "\n\n")
	if len(blocks) != len(names) {
		return nil, fmt.Errorf("systemctl show: %d answers for %d units", len(blocks), len(names))
	}
	res := make([]map[string]string, len(blocks))
	for i, b := range blocks {
		res[i] = map[string]string{}
		for _, line := range strings.Split(b, "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				res[i][k] = v
			}
		}
	}
	return res, nil
}
