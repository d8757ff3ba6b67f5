package modules

import (
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

var (
	str      = cty.String
	num      = cty.Number
	boolean  = cty.Bool
	strList  = cty.List(cty.String)
	numList  = cty.List(cty.Number)
	strMap   = cty.Map(cty.String)
	anything = cty.DynamicPseudoType
)

// Kind names.
const (
	KindPackage          = "package"
	KindFile             = "file"
	KindDirectory        = "directory"
	KindSymlink          = "symlink"
	KindUser             = "user"
	KindGroup            = "group"
	KindService          = "service"
	KindTimer            = "timer"
	KindSecret           = "secret"
	KindSysctl           = "sysctl"
	KindFirewall         = "firewall"
	KindHealthCheck      = "health_check"
	KindActivationScript = "activation_script"
	KindHostname         = "hostname"
	KindTimezone         = "timezone"
	// KindSecretsAllowTmpfs is the host setting secrets_allow_tmpfs.
	KindSecretsAllowTmpfs = "secrets_allow_tmpfs"
)

// BasicKinds are the kinds set by an attribute of a host, role or defaults
// body (hostname = "...") rather than by a block.
var BasicKinds = []string{KindHostname, KindTimezone, KindSecretsAllowTmpfs}

// Kinds returns every built-in kind, in the order they are realized. The
// kinds without a block form (hostname, timezone) are set by attributes of a
// host or role and have a single attribute "value".
//
// Each kind's schema, validation and realization live together in one
// kind_*.go file; adding a kind means writing its constructor there and
// listing it here.
func Kinds() []*Kind {
	return []*Kind{
		packageKind(),
		groupKind(),
		userKind(),
		directoryKind(),
		fileKind(),
		symlinkKind(),
		secretKind(),
		sysctlKind(),
		firewallKind(),
		serviceKind(),
		timerKind(),
		activationScriptKind(),
		healthCheckKind(),
		pullKind(),
		hostnameKind(),
		timezoneKind(),
		secretsAllowTmpfsKind(),
	}
}

// Lookup returns the built-in kind called name.
func Lookup(name string) (*Kind, bool) {
	for _, k := range Kinds() {
		if k.Name == name {
			return k, true
		}
	}
	return nil, false
}

func errAt(rng *hcl.Range, summary, detail string, args ...any) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: fmt.Sprintf(detail, args...), Subject: rng}
}

// defRangeOf is where to report a problem with the resource's name.
func (r *Resource) nameRange() *hcl.Range { return &r.DefRange }

func checkAbsPath(r *Resource) hcl.Diagnostics {
	if !path.IsAbs(r.Name) || path.Clean(r.Name) != r.Name || r.Name == "/" {
		return hcl.Diagnostics{errAt(r.nameRange(), "Invalid path",
			"The %s path %q must be absolute and clean, like \"/etc/hello/config.toml\".", r.Kind.Name, r.Name)}
	}
	return nil
}

// NormalizeMode returns mode as four octal digits, accepting three.
func NormalizeMode(mode string) (string, bool) {
	if len(mode) == 3 {
		mode = "0" + mode
	}
	if len(mode) != 4 {
		return "", false
	}
	if _, err := strconv.ParseUint(mode, 8, 32); err != nil {
		return "", false
	}
	return mode, true
}

func checkMode(r *Resource) hcl.Diagnostics {
	if !r.Has("mode") {
		return nil
	}
	if _, ok := NormalizeMode(r.String("mode", "")); !ok {
		return hcl.Diagnostics{errAt(r.Range("mode"), "Invalid mode",
			"The mode %q is not an octal permission like \"0644\"; write it as a string of three or four octal digits.", r.String("mode", ""))}
	}
	return nil
}

var accountRe = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,30}\$?$`)

func checkAccount(r *Resource, what, name string, rng *hcl.Range) hcl.Diagnostics {
	if !accountRe.MatchString(name) {
		return hcl.Diagnostics{errAt(rng, "Invalid "+what+" name",
			"%q is not a valid %s name: use lowercase letters, digits, _ and -, starting with a letter or _, at most 32 characters.", name, what)}
	}
	return nil
}

func checkOwner(r *Resource) hcl.Diagnostics {
	var diags hcl.Diagnostics
	for _, a := range []string{"owner", "group"} {
		if r.Has(a) {
			what := "user"
			if a == "group" {
				what = "group"
			}
			diags = append(diags, checkAccount(r, what, r.String(a, ""), r.Range(a))...)
		}
	}
	return diags
}

var nameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9+._=-]*$`)

func checkName(r *Resource) hcl.Diagnostics {
	if !nameRe.MatchString(r.Name) || len(r.Name) > 180 {
		return hcl.Diagnostics{errAt(r.nameRange(), "Invalid "+strings.ReplaceAll(r.Kind.Name, "_", " ")+" name",
			"%q must start with a letter or digit and contain only letters, digits and + . _ = -.", r.Name)}
	}
	return nil
}

func oneOf(s string, options ...string) bool {
	for _, o := range options {
		if s == o {
			return true
		}
	}
	return false
}
