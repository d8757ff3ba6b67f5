package modules

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/declarative/deploy/manifest"
	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// sysctlKind is a kernel parameter.
func sysctlKind() *Kind {
	return &Kind{Name: KindSysctl, Label: "key", Doc: "a kernel parameter",
		Attrs: []Attr{{Name: "value", Type: anything, Required: true},
			{Name: "boot", Type: boolean, Doc: "set only at boot, for parameters the kernel takes once (default false); until the host reboots, it reports that it needs to"}},
		Check:   checkSysctl,
		Realize: realizeSysctls,
	}
}

// firewallKind is the host's nftables firewall (one merged instance per host).
func firewallKind() *Kind {
	return &Kind{Name: KindFirewall, Doc: "the host firewall (nftables table inet deploy)",
		Attrs: []Attr{
			{Name: "enable", Type: boolean, Doc: "default true"},
			{Name: "allowed_tcp_ports", Type: numList, Merge: MergeSet},
			{Name: "allowed_udp_ports", Type: numList, Merge: MergeSet},
			{Name: "trusted_interfaces", Type: strList, Merge: MergeSet},
			{Name: "allow_ping", Type: boolean, Doc: "default true"},
			{Name: "allow_ssh", Type: boolean, Doc: "accept the host's SSH port (default true), so a deploy cannot lock itself out"},
			{Name: "extra_input_rules", Type: strList, Merge: MergeSet, Doc: "nft rules added to the input chain"},
		},
		Check:   checkFirewall,
		Realize: realizeFirewall,
	}
}

// hostnameKind is the host name, set by the hostname attribute of a host or role.
func hostnameKind() *Kind {
	return &Kind{Name: KindHostname, Doc: "the host name (attribute hostname = \"...\")",
		Attrs:   []Attr{{Name: "value", Type: str, Required: true}},
		Check:   checkHostname,
		Realize: realizeHostname,
	}
}

// timezoneKind is the time zone, set by the timezone attribute of a host or role.
func timezoneKind() *Kind {
	return &Kind{Name: KindTimezone, Doc: "the time zone (attribute timezone = \"...\")",
		Attrs:   []Attr{{Name: "value", Type: str, Required: true}},
		Check:   checkTimezone,
		Realize: realizeTimezone,
	}
}

// secretsAllowTmpfsKind is the host setting secrets_allow_tmpfs: secrets may
// go to a tmpfs, which can swap, where a ramfs cannot be mounted.
func secretsAllowTmpfsKind() *Kind {
	return &Kind{Name: KindSecretsAllowTmpfs, Doc: "allow secrets on a tmpfs, which can swap, where a ramfs cannot be mounted (attribute secrets_allow_tmpfs = true)",
		Attrs: []Attr{{Name: "value", Type: boolean, Required: true}},
		Realize: func(c *Realization, rs []*Resource) {
			for _, r := range rs {
				c.Manifest.SecretsAllowTmpfs = r.Bool("value", false)
			}
		},
	}
}

var sysctlRe = regexp.MustCompile(`^[a-z0-9_]+(\.[A-Za-z0-9_*-]+)+$`)

func checkSysctl(r *Resource) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if !sysctlRe.MatchString(r.Name) {
		diags = append(diags, errAt(r.nameRange(), "Invalid sysctl key",
			"%q is not a kernel parameter name in dotted form, like \"net.ipv4.ip_forward\".", r.Name))
	}
	if _, ok := SysctlValue(r); !ok {
		diags = append(diags, errAt(r.Range("value"), "Invalid sysctl value", "The value must be a string, number or bool."))
	}
	return diags
}

// SysctlValue returns a sysctl's value as the kernel takes it.
func SysctlValue(r *Resource) (string, bool) {
	v := r.Attrs["value"].V
	switch {
	case v.IsNull():
		return "", false
	case v.Type() == cty.String:
		return v.AsString(), !strings.ContainsAny(v.AsString(), "\n\x00")
	case v.Type() == cty.Number:
		return v.AsBigFloat().Text('f', -1), true
	case v.Type() == cty.Bool:
		if v.True() {
			return "1", true
		}
		return "0", true
	}
	return "", false
}

func checkFirewall(r *Resource) hcl.Diagnostics {
	var diags hcl.Diagnostics
	for _, a := range []string{"allowed_tcp_ports", "allowed_udp_ports"} {
		for _, p := range r.Strings(a) {
			n, err := strconv.Atoi(p)
			if err != nil || n < 1 || n > 65535 {
				diags = append(diags, errAt(r.Range(a), "Invalid port", "%s: %s is not a port number between 1 and 65535.", a, p))
			}
		}
	}
	for _, i := range r.Strings("trusted_interfaces") {
		if i == "" || len(i) > 15 || strings.ContainsAny(i, "\"\\ /\n") {
			diags = append(diags, errAt(r.Range("trusted_interfaces"), "Invalid interface name", "%q is not a network interface name.", i))
		}
	}
	for _, rule := range r.Strings("extra_input_rules") {
		if strings.ContainsAny(rule, "\n{};") {
			diags = append(diags, errAt(r.Range("extra_input_rules"), "Invalid firewall rule",
				"Each extra input rule is one nft rule on one line without braces or ';'; got %q.", rule))
		}
	}
	return diags
}

var hostnameRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)

func checkHostname(r *Resource) hcl.Diagnostics {
	if h := r.String("value", ""); !hostnameRe.MatchString(h) || len(h) > 253 {
		return hcl.Diagnostics{errAt(r.Range("value"), "Invalid hostname", "%q is not a valid host name.", h)}
	}
	return nil
}

var tzRe = regexp.MustCompile(`^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$`)

func checkTimezone(r *Resource) hcl.Diagnostics {
	if tz := r.String("value", ""); !tzRe.MatchString(tz) || strings.Contains(tz, "..") {
		return hcl.Diagnostics{errAt(r.Range("value"), "Invalid timezone", "%q is not an IANA time zone name like \"Europe/Berlin\" or \"UTC\".", tz)}
	}
	return nil
}

func realizeSysctls(c *Realization, rs []*Resource) {
	for _, r := range rs {
		v, _ := SysctlValue(r)
		c.Manifest.Sysctls = append(c.Manifest.Sysctls, manifest.Sysctl{Key: r.Name, Value: v, Boot: r.Bool("boot", false)})
	}
}

func realizeFirewall(c *Realization, rs []*Resource) {
	for _, r := range rs {
		if !r.Bool("enable", true) {
			continue
		}
		src := c.add(r, "nftables-"+StoreName(c.Config.Host, "host")+".conf", []byte(FirewallRuleset(r, c.Config.SSHPort)), false, "enable")
		c.Manifest.Firewall = &manifest.Firewall{Ruleset: src, Table: FirewallTable}
	}
}

func realizeHostname(c *Realization, rs []*Resource) {
	for _, r := range rs {
		c.Manifest.Hostname = r.String("value", "")
	}
}

func realizeTimezone(c *Realization, rs []*Resource) {
	for _, r := range rs {
		c.Manifest.Timezone = r.String("value", "")
	}
}

// FirewallTable is the nftables table deploy owns.
const FirewallTable = "inet deploy"

// FirewallRuleset renders the firewall resource as an nftables script that
// replaces table inet deploy atomically (nft -f applies a file as one
// transaction).
func FirewallRuleset(r *Resource, sshPort int) string {
	var b strings.Builder
	b.WriteString("#!/usr/sbin/nft -f\n# Generated by deploy.\n")
	fmt.Fprintf(&b, "table %s\ndelete table %s\ntable %s {\n", FirewallTable, FirewallTable, FirewallTable)
	b.WriteString("\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n")
	b.WriteString("\t\tct state established,related accept\n\t\tct state invalid drop\n\t\tiif \"lo\" accept\n")
	if ifs := r.Strings("trusted_interfaces"); len(ifs) > 0 {
		q := make([]string, len(ifs))
		for i, s := range ifs {
			q[i] = strconv.Quote(s)
		}
		fmt.Fprintf(&b, "\t\tiifname { %s } accept\n", strings.Join(q, ", "))
	}
	if r.Bool("allow_ping", true) {
		// nft's own keywords, not /etc/protocols names (minimal hosts
		// have no /etc/protocols).
		b.WriteString("\t\tmeta l4proto { icmp, icmpv6 } accept\n")
	}
	tcp := r.Strings("allowed_tcp_ports")
	if r.Bool("allow_ssh", true) {
		if sshPort == 0 {
			sshPort = 22
		}
		tcp = append(tcp, strconv.Itoa(sshPort))
	}
	tcp = sortedPorts(tcp)
	if len(tcp) > 0 {
		fmt.Fprintf(&b, "\t\ttcp dport { %s } accept\n", strings.Join(tcp, ", "))
	}
	if udp := sortedPorts(r.Strings("allowed_udp_ports")); len(udp) > 0 {
		fmt.Fprintf(&b, "\t\tudp dport { %s } accept\n", strings.Join(udp, ", "))
	}
	for _, rule := range r.Strings("extra_input_rules") {
		fmt.Fprintf(&b, "\t\t%s\n", rule)
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

func sortedPorts(ps []string) []string {
	slices.SortFunc(ps, compareNatural)
	return slices.Compact(ps)
}
