package modules

import (
	"path"
	"strings"

	"github.com/declarative/deploy/manifest"
	"github.com/hashicorp/hcl/v2"
)

// directoryKind is a directory with owner and mode.
func directoryKind() *Kind {
	return &Kind{Name: KindDirectory, Label: "path", Doc: "a directory",
		Attrs: []Attr{
			{Name: "owner", Type: str}, {Name: "group", Type: str}, modeAttr,
		},
		Check:   checkDirectory,
		Realize: realizeDirectories,
	}
}

// fileKind is a regular file whose content goes into the store.
func fileKind() *Kind {
	return &Kind{Name: KindFile, Label: "path", Doc: "a regular file with fixed content",
		Attrs: []Attr{
			{Name: "content", Type: str, Doc: "the content"},
			{Name: "source", Type: str, Doc: "a file inside the fleet directory to copy"},
			{Name: "owner", Type: str}, {Name: "group", Type: str}, modeAttr,
			{Name: "force", Type: boolean, Doc: "replace a file that deploy did not create"},
		},
		Check:   checkFile,
		Realize: realizeFiles,
	}
}

// symlinkKind is a symbolic link.
func symlinkKind() *Kind {
	return &Kind{Name: KindSymlink, Label: "path", Doc: "a symbolic link",
		Attrs: []Attr{
			{Name: "target", Type: str, Required: true},
			{Name: "force", Type: boolean},
		},
		Check:   checkSymlink,
		Realize: realizeSymlinks,
	}
}

func checkDirectory(r *Resource) hcl.Diagnostics {
	return append(append(checkAbsPath(r), checkMode(r)...), checkOwner(r)...)
}

func checkFile(r *Resource) hcl.Diagnostics {
	diags := append(append(checkAbsPath(r), checkMode(r)...), checkOwner(r)...)
	if r.Has("content") == r.Has("source") {
		diags = append(diags, errAt(r.nameRange(), "Invalid file content",
			"File %q needs exactly one of content = \"...\" or source = \"./path\".", r.Name))
	}
	return diags
}

func checkSymlink(r *Resource) hcl.Diagnostics {
	diags := checkAbsPath(r)
	if t := r.String("target", ""); t == "" || strings.ContainsRune(t, 0) {
		diags = append(diags, errAt(r.Range("target"), "Invalid symlink target", "The target of symlink %q must not be empty.", r.Name))
	}
	return diags
}

func realizeDirectories(c *Realization, rs []*Resource) {
	for _, r := range rs {
		mode, _ := NormalizeMode(r.String("mode", "0755"))
		c.Manifest.Directories = append(c.Manifest.Directories, manifest.Directory{Path: r.Name, Owner: r.String("owner", "root"),
			Group: r.String("group", "root"), Mode: mode})
	}
}

func realizeFiles(c *Realization, rs []*Resource) {
	for _, r := range rs {
		var content []byte
		attr := "content"
		if r.Has("source") {
			attr = "source"
			var ok bool
			if content, ok = c.read(r, "source"); !ok {
				continue
			}
		} else {
			content = []byte(r.String("content", ""))
		}
		mode, _ := NormalizeMode(r.String("mode", "0644"))
		src := c.add(r, StoreName(path.Base(r.Name), "file"), content, false, attr)
		c.Manifest.Files = append(c.Manifest.Files, manifest.File{Path: r.Name, Source: src, Owner: r.String("owner", "root"),
			Group: r.String("group", "root"), Mode: mode, Force: r.Bool("force", false)})
	}
}

func realizeSymlinks(c *Realization, rs []*Resource) {
	for _, r := range rs {
		c.Manifest.Symlinks = append(c.Manifest.Symlinks, manifest.Symlink{Path: r.Name, Target: r.String("target", ""), Force: r.Bool("force", false)})
	}
}
