package modules

import (
	"path"
	"strings"

	"github.com/declarative/deploy/manifest"
	"github.com/hashicorp/hcl/v2"
)

// groupKind is a Unix group.
func groupKind() *Kind {
	return &Kind{Name: KindGroup, Label: "name", Doc: "a Unix group",
		Attrs: []Attr{
			{Name: "gid", Type: num},
			{Name: "system", Type: boolean},
			{Name: "members", Type: strList, Merge: MergeSet},
		},
		Check:   checkGroup,
		Realize: realizeGroups,
	}
}

// userKind is a Unix user; a user whose primary group is its own name gets that group too.
func userKind() *Kind {
	return &Kind{Name: KindUser, Label: "name", Doc: "a Unix user",
		Attrs: []Attr{
			{Name: "uid", Type: num},
			{Name: "system", Type: boolean, Doc: "a system account: system UID range, no login shell"},
			{Name: "group", Type: str, Doc: "primary group (default: a group named after the user, created with it)"},
			{Name: "groups", Type: strList, Merge: MergeSet, Doc: "supplementary groups"},
			{Name: "description", Type: str},
			{Name: "home", Type: str, Doc: `default /home/NAME, or /var/empty for system users`},
			{Name: "create_home", Type: boolean, Doc: "default true for normal users, false for system users"},
			{Name: "shell", Type: str, Doc: "default /bin/bash, or /usr/sbin/nologin for system users"},
			{Name: "authorized_keys", Type: strList, Merge: MergeSet, Doc: "SSH public keys, one line each"},
		},
		Check:   checkUser,
		Realize: realizeUsers,
	}
}

func checkGroup(r *Resource) hcl.Diagnostics {
	diags := checkAccount(r, "group", r.Name, r.nameRange())
	if gid, ok := r.Int("gid"); ok && (gid < 0 || gid > 65534) {
		diags = append(diags, errAt(r.Range("gid"), "Invalid gid", "The gid %d is outside 0–65534.", gid))
	}
	for _, m := range r.Strings("members") {
		diags = append(diags, checkAccount(r, "user", m, r.Range("members"))...)
	}
	return diags
}

func checkUser(r *Resource) hcl.Diagnostics {
	diags := checkAccount(r, "user", r.Name, r.nameRange())
	if uid, ok := r.Int("uid"); ok && (uid < 0 || uid > 65534) {
		diags = append(diags, errAt(r.Range("uid"), "Invalid uid", "The uid %d is outside 0–65534.", uid))
	}
	if r.Has("group") {
		diags = append(diags, checkAccount(r, "group", r.String("group", ""), r.Range("group"))...)
	}
	for _, g := range r.Strings("groups") {
		diags = append(diags, checkAccount(r, "group", g, r.Range("groups"))...)
	}
	for _, a := range []string{"home", "shell"} {
		if p := r.String(a, ""); r.Has(a) && (!path.IsAbs(p) || path.Clean(p) != p) {
			diags = append(diags, errAt(r.Range(a), "Invalid "+a, "The %s %q must be an absolute, clean path.", a, p))
		}
	}
	for _, k := range r.Strings("authorized_keys") {
		if strings.ContainsAny(k, "\n\r") || len(strings.Fields(k)) < 2 {
			diags = append(diags, errAt(r.Range("authorized_keys"), "Invalid authorized key",
				"Each authorized key is one line like \"ssh-ed25519 AAAA... comment\"; got %q.", k))
		}
	}
	return diags
}

func realizeGroups(c *Realization, rs []*Resource) {
	for _, r := range rs {
		g := manifest.Group{Name: r.Name, System: r.Bool("system", false), Members: r.Strings("members")}
		if gid, ok := r.Int("gid"); ok {
			g.GID = &gid
		}
		c.Manifest.Groups = append(c.Manifest.Groups, g)
	}
}

func realizeUsers(c *Realization, rs []*Resource) {
	groups := map[string]bool{}
	for _, r := range c.Resources(KindGroup) {
		groups[r.Name] = true
	}
	for _, r := range rs {
		sys := r.Bool("system", false)
		u := manifest.User{Name: r.Name, System: sys, Group: r.String("group", r.Name), Groups: r.Strings("groups"),
			Description: r.String("description", "")}
		if uid, ok := r.Int("uid"); ok {
			u.UID = &uid
		}
		if sys {
			u.Home, u.Shell = r.String("home", "/var/empty"), r.String("shell", "/usr/sbin/nologin")
			u.CreateHome = r.Bool("create_home", false)
		} else {
			u.Home, u.Shell = r.String("home", "/home/"+r.Name), r.String("shell", "/bin/bash")
			u.CreateHome = r.Bool("create_home", true)
		}
		if r.Has("authorized_keys") {
			u.AuthorizedKeys = r.Strings("authorized_keys")
		}
		if u.Group == r.Name && !groups[r.Name] {
			groups[r.Name] = true
			c.Manifest.Groups = append(c.Manifest.Groups, manifest.Group{Name: r.Name, System: sys})
		}
		c.Manifest.Users = append(c.Manifest.Users, u)
	}
}
