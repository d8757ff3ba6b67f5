package vmtest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path"
	"slices"
	"strings"
)

// The Debian mirror debootstrap builds the images from is the machine's own:
// the Debian archive that apt on this machine fetches from, read from the
// same files apt reads. No mirror is named in this package.

// Where apt reads its sources, relative to the machine's root.
const (
	aptSourceList  = "etc/apt/sources.list"
	aptSourceParts = "etc/apt/sources.list.d"
)

// Mirror returns the URL of the Debian archive that debootstrap builds the
// images from: $DEPLOY_VMTEST_MIRROR when it is set, else the machine's own
// Debian archive as apt finds it in /etc/apt/sources.list and the *.list and
// *.sources files of /etc/apt/sources.list.d. Only building an image needs
// it; a cached image needs no mirror.
func Mirror() (string, error) {
	if m := os.Getenv("DEPLOY_VMTEST_MIRROR"); m != "" {
		return m, nil
	}
	return aptMirror(os.DirFS("/"), imageSuite)
}

// aptSource is one entry of apt's sources, one type, URI and suite each (a
// deb822 stanza with two URIs is two entries).
type aptSource struct {
	typ        string // deb or deb-src
	uri        string
	suite      string
	components []string
	signedBy   []string // keyring files or fingerprints; none: every trusted key
}

// aptMirror returns the URI of the first deb entry in the apt sources under
// root that is the Debian archive proper, for debootstrap to install suite
// from: component main, a URI debootstrap can fetch (http, https, file)
// whose path does not end in -security. Entries for suite itself come
// first, then those signed by Debian's archive keyring (or by every trusted
// key, as apt does when no Signed-By is given) before others signed by
// their own. When no entry is for suite, one for another Debian release
// (a suite without a -security, -updates or -backports suffix) signed by
// Debian's keyring will do: a Debian mirror carries every release.
func aptMirror(root fs.FS, suite string) (string, error) {
	sources, read, err := readAptSources(root)
	if err != nil {
		return "", fmt.Errorf("find a Debian mirror: %w", err)
	}
	best, bestRank := "", -1
	for _, s := range sources {
		if r := mirrorRank(s, suite); r > bestRank {
			best, bestRank = strings.TrimRight(s.uri, "/"), r
		}
	}
	if bestRank < 0 {
		files := "none of /" + aptSourceList + ", /" + aptSourceParts + "/*.list, *.sources"
		if len(read) > 0 {
			files = "/" + strings.Join(read, ", /")
		}
		return "", fmt.Errorf("find a Debian mirror: no deb entry for the Debian archive (component main, a release suite such as %q) in apt's sources (read %s); set $DEPLOY_VMTEST_MIRROR to a Debian mirror's URL", suite, files)
	}
	return best, nil
}

// mirrorRank says how well s fits as the Debian archive to install suite
// from: -1 not at all, higher is better.
func mirrorRank(s aptSource, suite string) int {
	if s.typ != "deb" || !slices.Contains(s.components, "main") {
		return -1
	}
	u, err := url.Parse(s.uri)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "file") {
		return -1 // cdrom:, mirror+file:, tor+http: and the like are apt's own
	}
	if strings.HasSuffix(strings.TrimRight(u.Path, "/"), "-security") {
		return -1
	}
	debianKey := signedByDebian(s.signedBy)
	switch {
	case s.suite == suite && debianKey:
		return 3
	case s.suite == suite:
		return 2 // a local mirror re-signed with its own key
	case debianKey && s.suite != "" && !strings.ContainsAny(s.suite, "-/"):
		return 1 // another release: the same archive serves suite
	}
	return -1
}

// signedByDebian reports whether an entry is checked with Debian's archive
// keyring, or with every trusted key (no Signed-By), rather than a keyring of
// its own, as third-party repositories are.
func signedByDebian(signedBy []string) bool {
	for _, k := range signedBy {
		if !strings.HasPrefix(k, "/") || !strings.HasPrefix(path.Base(k), "debian-archive-") {
			return false
		}
	}
	return true
}

// readAptSources reads apt's sources under root in apt's order:
// sources.list, then the files of sources.list.d by name. It returns the
// entries and the files it read.
func readAptSources(root fs.FS) (sources []aptSource, read []string, err error) {
	b, err := fs.ReadFile(root, aptSourceList)
	switch {
	case err == nil:
		sources = append(sources, parseOneLineSources(b)...)
		read = append(read, aptSourceList)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, nil, err
	}
	entries, err := fs.ReadDir(root, aptSourceParts)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, err
	}
	for _, e := range entries { // sorted by name, as apt reads them
		if !aptPartName(e.Name()) {
			continue
		}
		name := path.Join(aptSourceParts, e.Name())
		if fi, err := fs.Stat(root, name); err != nil || !fi.Mode().IsRegular() {
			continue // apt reads regular files (and links to them) only
		}
		b, err := fs.ReadFile(root, name)
		if err != nil {
			return nil, nil, err
		}
		if strings.HasSuffix(name, ".sources") {
			sources = append(sources, parseDeb822Sources(b)...)
		} else {
			sources = append(sources, parseOneLineSources(b)...)
		}
		read = append(read, name)
	}
	return sources, read, nil
}

// aptPartName reports whether apt reads a file of sources.list.d: a name
// ending in .list or .sources made only of letters, digits, '_', '-' and
// '.' (so x.list.disabled or x.list~ are ignored, as apt ignores them).
func aptPartName(name string) bool {
	if !strings.HasSuffix(name, ".list") && !strings.HasSuffix(name, ".sources") {
		return false
	}
	for _, c := range name {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// parseOneLineSources parses apt's one-line format (sources.list(5)):
//
//	deb [ option=value ... ] uri suite [component ...]
//
// with comments from '#' (but not inside the brackets) to the end of the
// line. Lines it cannot use are skipped.
func parseOneLineSources(b []byte) []aptSource {
	var sources []aptSource
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(stripComment(sc.Text()))
		i := strings.IndexAny(line, " \t")
		if i < 0 {
			continue
		}
		typ, rest := line[:i], strings.TrimSpace(line[i:])
		var options string
		if strings.HasPrefix(rest, "[") {
			end := strings.IndexByte(rest, ']')
			if end < 0 {
				continue
			}
			options, rest = rest[1:end], rest[end+1:]
		}
		f := strings.Fields(rest)
		if len(f) < 2 {
			continue
		}
		s := aptSource{typ: typ, uri: f[0], suite: f[1], components: f[2:]}
		for _, o := range strings.Fields(options) {
			if k, v, ok := strings.Cut(o, "="); ok && strings.EqualFold(k, "signed-by") {
				s.signedBy = strings.Split(v, ",")
			}
		}
		sources = append(sources, s)
	}
	return sources
}

// stripComment cuts a one-line entry at its first '#' outside brackets.
func stripComment(line string) string {
	inOptions := false
	for i, c := range line {
		switch {
		case c == '[':
			inOptions = true
		case c == ']':
			inOptions = false
		case c == '#' && !inOptions:
			return line[:i]
		}
	}
	return line
}

// parseDeb822Sources parses apt's deb822 format (sources.list(5)): stanzas
// separated by blank lines, fields "Name: value" continued on lines that
// start with white space, comment lines starting with '#'. Field names are
// case-insensitive. A stanza with "Enabled: no" is skipped.
func parseDeb822Sources(b []byte) []aptSource {
	var sources []aptSource
	fields := map[string]string{}
	last := ""
	flush := func() {
		defer func() { fields, last = map[string]string{}, "" }()
		if len(fields) == 0 || !aptBool(fields["enabled"], true) {
			return
		}
		comps := strings.Fields(fields["components"])
		signedBy := strings.Fields(strings.ReplaceAll(fields["signed-by"], ",", " "))
		for _, typ := range strings.Fields(fields["types"]) {
			for _, uri := range strings.Fields(fields["uris"]) {
				for _, suite := range strings.Fields(fields["suites"]) {
					sources = append(sources, aptSource{typ: typ, uri: uri, suite: suite, components: comps, signedBy: signedBy})
				}
			}
		}
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "#"):
		case strings.TrimSpace(line) == "":
			flush()
		case line[0] == ' ' || line[0] == '\t':
			if last != "" {
				fields[last] += "\n" + strings.TrimSpace(line)
			}
		default:
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			last = strings.ToLower(strings.TrimSpace(k))
			fields[last] = strings.TrimSpace(v)
		}
	}
	flush()
	return sources
}

// aptBool reads a boolean as apt does, def when it is empty or unknown.
func aptBool(v string, def bool) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "yes", "true", "with", "enable", "1":
		return true
	case "no", "false", "without", "disable", "0":
		return false
	}
	return def
}
