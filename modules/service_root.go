package modules

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/declarative/deploy/manifest"
	"github.com/hashicorp/hcl/v2"
)

// execDirectories are the service attributes for systemd's per-service
// directories.
var execDirectories = []struct{ attr, key, base string }{
	{"state_directory", "StateDirectory", "/var/lib"},
	{"runtime_directory", "RuntimeDirectory", "/run"},
	{"cache_directory", "CacheDirectory", "/var/cache"},
	{"logs_directory", "LogsDirectory", "/var/log"},
}

// bind is one entry of a service's bind list.
type bind struct {
	src, dst string
	rw       bool
	optional bool // "-SRC": systemd ignores a missing source
}

// parseBind parses "PATH", "PATH:rw", "SRC:DST", "SRC:DST:ro" and so on; a
// leading "-" makes the source optional.
func parseBind(s string) (bind, error) {
	var b bind
	if rest, ok := strings.CutPrefix(s, "-"); ok {
		b.optional, s = true, rest
	}
	parts := strings.Split(s, ":")
	switch last := parts[len(parts)-1]; last {
	case "rw", "ro":
		b.rw = last == "rw"
		parts = parts[:len(parts)-1]
	}
	switch len(parts) {
	case 1:
		b.src, b.dst = parts[0], parts[0]
	case 2:
		b.src, b.dst = parts[0], parts[1]
	default:
		return b, errors.New(`want "PATH", "SRC:DST", optionally followed by ":rw" or ":ro"`)
	}
	for _, p := range []string{b.src, b.dst} {
		if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
			return b, fmt.Errorf("%q is not an absolute, clean path other than /", p)
		}
		if strings.ContainsAny(p, " \t\n%\\\"'") {
			return b, fmt.Errorf("%q contains a space, quote, backslash or %%", p)
		}
	}
	return b, nil
}

// unitValue is the entry in BindPaths= or BindReadOnlyPaths= syntax.
func (b bind) unitValue() string {
	v := b.src
	if b.optional {
		v = "-" + v
	}
	if b.dst != b.src {
		v += ":" + b.dst
	}
	return v
}

// imageRun is what a service that runs in an image adds to its unit.
type imageRun struct {
	img *Image
	// uid and gid are the image's user and group as numbers, "" for
	// root or when the service sets its own user.
	uid, gid   string
	execStart  string
	stopSignal string
}

// defaultPath is the PATH an image gets when its configuration sets none,
// the one Docker uses.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// imageRunOf works out how service r runs in img: the user, the command
// (the image's entrypoint and cmd unless exec_start is set, the program
// found on the image's PATH) and the mount points systemd needs, which must
// exist in the image: systemd would otherwise create them inside the
// image's realized root, which every generation running the image shares.
func imageRunOf(r *Resource, img *Image) (*imageRun, hcl.Diagnostics) {
	run := &imageRun{img: img, stopSignal: img.StopSignal}
	if !img.Known {
		// deploy check: the image was not fetched.
		return run, nil
	}
	var diags hcl.Diagnostics
	if !r.Has("user") {
		uid, gid, err := imageUser(img)
		if err != nil {
			diags = append(diags, errAt(r.nameRange(), "Unknown image user",
				"Service %q runs image %s as %s; set user = \"...\" on the service to run it as a user of the host.", r.Name, img.Digest, err))
		}
		run.uid, run.gid = uid, gid
	}
	if !r.Has("exec_start") {
		cmd, err := imageCommand(img, run.env(r.Map("environment")), r.String("working_directory", img.WorkingDir))
		if err != nil {
			diags = append(diags, errAt(r.nameRange(), "Missing exec_start", "Service %q: %s; set exec_start.", r.Name, err))
		}
		run.execStart = cmd
	}
	check := func(attr, p string) {
		for _, under := range []string{"/run", "/tmp", "/var/tmp", "/dev", "/proc", "/sys"} {
			if p == under || strings.HasPrefix(p, under+"/") {
				return // a file system systemd mounts: it makes the point there
			}
		}
		if _, ok := resolveInRoot(img.RootDir, p); !ok {
			diags = append(diags, errAt(r.Range(attr), "Missing mount point",
				"Service %q needs %s in the image (%s) as a mount point, and the image has no such path: systemd would create it inside the image's realized root, which every generation running the image shares. Use a path the image has, or add it to the image.", r.Name, p, img.Digest))
		}
	}
	for _, b := range r.Strings("bind") {
		if bd, err := parseBind(b); err == nil {
			check("bind", bd.dst)
		}
	}
	for _, a := range execDirectories {
		for _, d := range r.Strings(a.attr) {
			check(a.attr, path.Join(a.base, d))
		}
	}
	return run, diags
}

// render adds the root directory (the image's root as the agent realizes
// it), the mounts every image service gets, the read-only root and the
// image's user and working directory.
func (run *imageRun) render(u *unitFile, r *Resource) {
	u.set("Service", "RootDirectory", run.img.Root)
	u.set("Service", "MountAPIVFS", "yes")
	u.set("Service", "PrivateTmp", "yes")
	u.set("Service", "BindReadOnlyPaths", "-/etc/resolv.conf -/etc/hosts")
	if !r.Bool("root_writable", false) {
		u.set("Service", "ProtectSystem", "strict")
	}
	if run.uid != "" {
		u.set("Service", "User", run.uid)
		u.set("Service", "Group", run.gid)
	}
	if !r.Has("working_directory") && run.img.WorkingDir != "" {
		u.set("Service", "WorkingDirectory", run.img.WorkingDir)
	}
}

// env is the image's environment with the service's on top.
func (run *imageRun) env(service map[string]string) map[string]string {
	out := map[string]string{}
	for _, kv := range run.img.Env {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			out[k] = v
		}
	}
	for k, v := range service {
		out[k] = v
	}
	return out
}

// imageUser returns the user and group the image runs as, as numbers
// ("", "" for root): the configuration's User ("name", "uid", "name:group",
// "uid:gid"), names resolved in the image's /etc/passwd and /etc/group the
// way a container runtime resolves them inside the image.
func imageUser(img *Image) (uid, gid string, err error) {
	user, group, hasGroup := strings.Cut(img.User, ":")
	if user == "" || user == "root" || user == "0" {
		if !hasGroup || group == "" || group == "root" || group == "0" {
			return "", "", nil
		}
		user = "0"
	}
	if _, err := strconv.Atoi(user); err == nil {
		uid = user
		if fields, ok := lookupDB(img.RootDir, "/etc/passwd", 2, user); ok {
			gid = fields[3]
		} else {
			gid = user // as runc: a uid without an entry runs with gid = uid
		}
	} else {
		if !accountRe.MatchString(user) {
			return "", "", fmt.Errorf("user %q, which is not a valid user name", user)
		}
		fields, ok := lookupDB(img.RootDir, "/etc/passwd", 0, user)
		if !ok {
			return "", "", fmt.Errorf("user %q, which the image's /etc/passwd does not have", user)
		}
		uid, gid = fields[2], fields[3]
	}
	if hasGroup && group != "" {
		if _, err := strconv.Atoi(group); err == nil {
			gid = group
		} else if fields, ok := lookupDB(img.RootDir, "/etc/group", 0, group); ok {
			gid = fields[2]
		} else {
			return "", "", fmt.Errorf("group %q, which the image's /etc/group does not have", group)
		}
	}
	for _, n := range []string{uid, gid} {
		if v, err := strconv.ParseUint(n, 10, 32); err != nil || v == 4294967295 {
			return "", "", fmt.Errorf("user %q, whose id %q is not a valid number", img.User, n)
		}
	}
	return uid, gid, nil
}

// imageUserOf is the image's user for the manifest (nil for root).
func imageUserOf(img *Image) (*manifest.ImageUser, error) {
	uid, gid, err := imageUser(img)
	if err != nil || uid == "" || uid == "0" {
		return nil, err
	}
	u := &manifest.ImageUser{}
	u.UID, _ = strconv.Atoi(uid)
	u.GID, _ = strconv.Atoi(gid)
	if fields, ok := lookupDB(img.RootDir, "/etc/passwd", 2, uid); ok && accountRe.MatchString(fields[0]) {
		u.Name = fields[0]
	}
	return u, nil
}

// lookupDB returns the fields of the first line of the colon-separated
// file p (in the image's root) whose field key is value.
func lookupDB(root, p string, key int, value string) ([]string, bool) {
	real, ok := resolveInRoot(root, p)
	if !ok {
		return nil, false
	}
	f, err := os.Open(real)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) >= 4 && fields[key] == value {
			if _, err := strconv.Atoi(fields[2]); err != nil {
				continue
			}
			if p == "/etc/passwd" {
				if _, err := strconv.Atoi(fields[3]); err != nil {
					continue
				}
			}
			return fields, true
		}
	}
	return nil, false
}

// imageCommand returns ExecStart= for the image's entrypoint and cmd, the
// program found on PATH inside the image when it is not a path.
func imageCommand(img *Image, env map[string]string, workDir string) (string, error) {
	argv := append(append([]string(nil), img.Entrypoint...), img.Cmd...)
	if len(argv) == 0 {
		return "", fmt.Errorf("image %s has neither an entrypoint nor a cmd", img.Digest)
	}
	prog := argv[0]
	switch {
	case strings.HasPrefix(prog, "/"):
	case strings.Contains(prog, "/"):
		if workDir == "" {
			workDir = "/"
		}
		prog = path.Join(workDir, prog)
	default:
		search, ok := env["PATH"]
		if !ok {
			search = defaultPath
		}
		found := ""
		for _, dir := range strings.Split(search, ":") {
			if !path.IsAbs(dir) {
				continue
			}
			cand := path.Join(dir, prog)
			if real, ok := resolveInRoot(img.RootDir, cand); ok {
				if fi, err := os.Stat(real); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
					found = cand
					break
				}
			}
		}
		if found == "" {
			return "", fmt.Errorf("the image's command %q is not on its PATH (%s)", prog, search)
		}
		prog = found
	}
	if real, ok := resolveInRoot(img.RootDir, prog); !ok {
		return "", fmt.Errorf("the image's command %s does not exist in the image", prog)
	} else if fi, err := os.Stat(real); err != nil || !fi.Mode().IsRegular() {
		return "", fmt.Errorf("the image's command %s is not a file", prog)
	}
	words := make([]string, len(argv))
	words[0] = systemdQuote(prog)
	for i, a := range argv[1:] {
		words[i+1] = systemdQuote(a)
	}
	return strings.Join(words, " "), nil
}

// systemdQuote quotes one word of a command line for ExecStart=, so that
// systemd passes it on unchanged: no splitting, no $VARIABLE or %specifier
// expansion.
func systemdQuote(s string) string {
	safe := s != ""
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("/._-+=,:@", c)) {
			safe = false
		}
	}
	if safe {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range s {
		switch c {
		case '"', '\\':
			b.WriteByte('\\')
			b.WriteRune(c)
		case '\n':
			b.WriteString(`\n`)
		case '\t':
			b.WriteString(`\t`)
		case '%':
			b.WriteString("%%")
		case '$':
			b.WriteString("$$")
		default:
			b.WriteRune(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// resolveInRoot returns where the absolute path p of the file tree at root
// is on this machine, following symbolic links the way they resolve when
// root is a process's root directory (never out of it), and whether it
// exists.
func resolveInRoot(root, p string) (string, bool) {
	if root == "" {
		return "", false
	}
	var stack []string
	comps := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for links := 0; len(comps) > 0; {
		c := comps[0]
		comps = comps[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
			continue
		}
		cur := filepath.Join(append([]string{root}, append(stack, c)...)...)
		fi, err := os.Lstat(cur)
		if err != nil {
			return "", false
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			if links++; links > 40 {
				return "", false
			}
			target, err := os.Readlink(cur)
			if err != nil {
				return "", false
			}
			if strings.HasPrefix(target, "/") {
				stack = nil
			}
			comps = append(strings.Split(target, "/"), comps...)
			continue
		}
		stack = append(stack, c)
	}
	return filepath.Join(append([]string{root}, stack...)...), true
}
