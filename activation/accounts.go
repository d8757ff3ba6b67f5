package activation

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/declarative/deploy/internal/atomicfile"
)

// Accounts are managed with the shadow tools (groupadd, useradd, usermod,
// gpasswd, userdel, groupdel): they lock /etc/passwd and friends the way
// every other tool on the host expects, and keep /etc/shadow and
// /etc/gshadow consistent. The agent removes only accounts it created
// (recorded in applied.json), never pre-existing ones, and never a home
// directory.

// passwdShell returns name's login shell from /etc/passwd.
func passwdShell(name string) string {
	f, err := os.Open("/etc/passwd")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Split(sc.Text(), ":")
		if len(fs) == 7 && fs[0] == name {
			return fs[6]
		}
	}
	return ""
}

func groupNamesOf(u *user.User) []string {
	ids, err := u.GroupIds()
	if err != nil {
		return nil
	}
	var names []string
	for _, id := range ids {
		if id == u.Gid {
			continue
		}
		if g, err := user.LookupGroupId(id); err == nil {
			names = append(names, g.Name)
		}
	}
	slices.Sort(names)
	return names
}

func (a *applier) accounts(ctx context.Context) error {
	created := func(list *[]string, name string) {
		if !slices.Contains(*list, name) {
			*list = append(*list, name)
		}
	}
	for _, g := range a.next.Groups {
		if _, err := user.LookupGroup(g.Name); err == nil {
			continue
		}
		args := []string{}
		if g.GID != nil {
			args = append(args, "-g", strconv.Itoa(*g.GID))
		}
		if g.System {
			args = append(args, "-r")
		}
		if err := run(ctx, a.opts, "groupadd", append(args, g.Name)...); err != nil {
			return fmt.Errorf("group %q: %w", g.Name, err)
		}
		created(&a.rec.CreatedGroups, g.Name)
		if err := a.l.writeApplied(a.rec); err != nil {
			return err
		}
		a.opts.logf("created group %s", g.Name)
	}
	for _, u := range a.next.Users {
		cur, err := user.Lookup(u.Name)
		if err != nil {
			args := []string{"-g", u.Group, "-d", u.Home, "-s", u.Shell}
			if len(u.Groups) > 0 {
				args = append(args, "-G", strings.Join(u.Groups, ","))
			}
			if u.UID != nil {
				args = append(args, "-u", strconv.Itoa(*u.UID))
			}
			if u.System {
				args = append(args, "-r")
			}
			if u.CreateHome {
				args = append(args, "-m")
			} else {
				args = append(args, "-M")
			}
			if u.Description != "" {
				args = append(args, "-c", u.Description)
			}
			if err := run(ctx, a.opts, "useradd", append(args, u.Name)...); err != nil {
				return fmt.Errorf("user %q: %w", u.Name, err)
			}
			created(&a.rec.CreatedUsers, u.Name)
			if err := a.l.writeApplied(a.rec); err != nil {
				return err
			}
			a.opts.logf("created user %s", u.Name)
		} else {
			var args []string
			if g, err := user.LookupGroupId(cur.Gid); err != nil || g.Name != u.Group {
				args = append(args, "-g", u.Group)
			}
			if cur.HomeDir != u.Home {
				args = append(args, "-d", u.Home)
			}
			if passwdShell(u.Name) != u.Shell {
				args = append(args, "-s", u.Shell)
			}
			if cur.Name != u.Description {
				args = append(args, "-c", u.Description)
			}
			want := slices.Clone(u.Groups)
			slices.Sort(want)
			if !slices.Equal(groupNamesOf(cur), want) {
				args = append(args, "-G", strings.Join(want, ","))
			}
			if len(args) > 0 {
				if err := run(ctx, a.opts, "usermod", append(args, u.Name)...); err != nil {
					return fmt.Errorf("user %q: %w", u.Name, err)
				}
				a.opts.logf("updated user %s", u.Name)
			}
		}
		if u.AuthorizedKeys != nil {
			if err := writeAuthorizedKeys(u.Name, u.Home, u.AuthorizedKeys); err != nil {
				return err
			}
		}
	}
	for _, g := range a.next.Groups {
		if len(g.Members) == 0 {
			continue
		}
		if err := run(ctx, a.opts, "gpasswd", "-M", strings.Join(g.Members, ","), g.Name); err != nil {
			return fmt.Errorf("group %q members: %w", g.Name, err)
		}
	}
	// Remove accounts we created that no generation wants any more.
	wantUser := map[string]bool{}
	for _, u := range a.next.Users {
		wantUser[u.Name] = true
	}
	for _, u := range a.prev.Users {
		if wantUser[u.Name] || !slices.Contains(a.rec.CreatedUsers, u.Name) {
			continue
		}
		if err := run(ctx, a.opts, "userdel", u.Name); err != nil {
			return fmt.Errorf("user %q: %w", u.Name, err)
		}
		a.rec.CreatedUsers = slices.DeleteFunc(a.rec.CreatedUsers, func(s string) bool { return s == u.Name })
		a.opts.logf("removed user %s", u.Name)
	}
	wantGroup := map[string]bool{}
	for _, g := range a.next.Groups {
		wantGroup[g.Name] = true
	}
	for _, g := range a.prev.Groups {
		if wantGroup[g.Name] || !slices.Contains(a.rec.CreatedGroups, g.Name) {
			continue
		}
		if _, err := user.LookupGroup(g.Name); err != nil {
			continue // userdel removed it with its user
		}
		if err := run(ctx, a.opts, "groupdel", g.Name); err != nil {
			return fmt.Errorf("group %q: %w", g.Name, err)
		}
		a.rec.CreatedGroups = slices.DeleteFunc(a.rec.CreatedGroups, func(s string) bool { return s == g.Name })
		a.opts.logf("removed group %s", g.Name)
	}
	return a.l.writeApplied(a.rec)
}

func writeAuthorizedKeys(name, home string, keys []string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return fmt.Errorf("user %q: %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	dir := filepath.Join(home, ".ssh")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("authorized keys of %q: %w", name, err)
	}
	if err := os.Lchown(dir, uid, gid); err != nil {
		return fmt.Errorf("authorized keys of %q: %w", name, err)
	}
	data := strings.Join(keys, "\n")
	if data != "" {
		data += "\n"
	}
	p := filepath.Join(dir, "authorized_keys")
	if err := atomicfile.Write(p, []byte(data), 0o600); err != nil {
		return err
	}
	return os.Lchown(p, uid, gid)
}
