package modules

import (
	"sort"
	"strings"
	"time"

	"github.com/declarative/deploy/manifest"
	"github.com/hashicorp/hcl/v2"
)

// activationScriptKind is a script run at the end of activation.
func activationScriptKind() *Kind {
	return &Kind{Name: KindActivationScript, Label: "name", Doc: "a script run at the end of activation",
		Attrs: []Attr{
			{Name: "script", Type: str, Doc: "the script text (#!/bin/sh with set -eu unless it has a #! line)"},
			{Name: "source", Type: str, Doc: "an executable file inside the fleet directory"},
			{Name: "after", Type: strList, Merge: MergeSet, Doc: "activation scripts to run first"},
		},
		Check:   checkActivationScript,
		Realize: realizeActivationScripts,
	}
}

// healthCheckKind is a check run after activation.
func healthCheckKind() *Kind {
	return &Kind{Name: KindHealthCheck, Label: "name", Doc: "a check run after activation",
		Attrs: []Attr{
			{Name: "type", Type: str, Doc: "http, tcp, command, unit_active or prometheus (default: from the attribute given)"},
			{Name: "url", Type: str, Doc: "http: the URL to GET; prometheus: the Prometheus server's base URL"}, {Name: "expect_status", Type: num},
			{Name: "address", Type: str},
			{Name: "command", Type: strList},
			{Name: "unit", Type: str},
			{Name: "timeout", Type: str, Doc: "how long the check may take to pass (default 30s)"},
			{Name: "interval", Type: str, Doc: "pause between attempts (default 1s)"},
			{Name: "attempt_timeout", Type: str, Doc: "how long one attempt may take before it is stopped and retried (default: max(interval, 5s), at most timeout); prometheus: how long one query may take"},
			{Name: "query", Type: str, Doc: "prometheus: the PromQL instant query"},
			{Name: "min", Type: num, Doc: "prometheus: the lowest value every sample may have"},
			{Name: "max", Type: num, Doc: "prometheus: the highest value every sample may have"},
			{Name: "window", Type: str, Doc: "prometheus: how long the query is evaluated, every interval (default 1m)"},
			{Name: "min_samples", Type: num, Doc: "prometheus: how many evaluations must return a value (default: half of them, rounded up)"},
			{Name: "run_on", Type: str, Doc: "prometheus: host (the agent evaluates it) or operator (deploy does, before it confirms); default host"},
		},
		Check:   checkHealthCheck,
		Realize: realizeHealthChecks,
	}
}

func checkActivationScript(r *Resource) hcl.Diagnostics {
	diags := checkName(r)
	if r.Has("script") == r.Has("source") {
		diags = append(diags, errAt(r.nameRange(), "Invalid activation script",
			"Activation script %q needs exactly one of script = \"...\" or source = \"./file\".", r.Name))
	}
	for _, a := range r.Strings("after") {
		if a == r.Name {
			diags = append(diags, errAt(r.Range("after"), "Invalid after", "Activation script %q cannot run after itself.", r.Name))
		}
	}
	return diags
}

// HealthCheckType returns the type of a health check: its type attribute, or
// the one implied by which of url, address, command and unit it sets.
func HealthCheckType(r *Resource) string {
	if r.Has("type") {
		return r.String("type", "")
	}
	if r.Has("query") {
		return manifest.CheckPrometheus
	}
	for a, t := range map[string]string{"url": "http", "address": "tcp", "command": "command", "unit": "unit_active"} {
		if r.Has(a) {
			return t
		}
	}
	return ""
}

func checkHealthCheck(r *Resource) hcl.Diagnostics {
	if HealthCheckType(r) == manifest.CheckPrometheus {
		return checkMetricGate(r)
	}
	diags := checkName(r)
	for _, a := range gateAttrs {
		if r.Has(a) {
			diags = append(diags, errAt(r.Range(a), "Invalid health check",
				"%s is an attribute of prometheus health checks; health check %q is of type %s.", a, r.Name, HealthCheckType(r)))
		}
	}
	set := 0
	for _, a := range []string{"url", "address", "command", "unit"} {
		if r.Has(a) {
			set++
		}
	}
	typ := HealthCheckType(r)
	need := map[string]string{"http": "url", "tcp": "address", "command": "command", "unit_active": "unit"}[typ]
	switch {
	case set != 1:
		diags = append(diags, errAt(r.nameRange(), "Invalid health check",
			"Health check %q needs exactly one of url (http), address (tcp), command or unit (unit_active).", r.Name))
	case need == "":
		diags = append(diags, errAt(r.Range("type"), "Invalid health check type",
			"type = %q is not one of http, tcp, command, unit_active, prometheus.", typ))
	case !r.Has(need):
		diags = append(diags, errAt(r.Range("type"), "Invalid health check",
			"A %s health check needs %s.", typ, need))
	}
	if u := r.String("url", ""); r.Has("url") && !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		diags = append(diags, errAt(r.Range("url"), "Invalid url", "The health check url %q must start with http:// or https://.", u))
	}
	if a := r.String("address", ""); r.Has("address") && !strings.Contains(a, ":") {
		diags = append(diags, errAt(r.Range("address"), "Invalid address", "The address %q must be host:port.", a))
	}
	if s, ok := r.Int("expect_status"); ok && (s < 100 || s > 599) {
		diags = append(diags, errAt(r.Range("expect_status"), "Invalid expect_status", "%d is not an HTTP status.", s))
	}
	durations := map[string]time.Duration{}
	for _, a := range []string{"timeout", "interval", "attempt_timeout"} {
		if r.Has(a) {
			d, err := time.ParseDuration(r.String(a, ""))
			if err != nil || d <= 0 {
				diags = append(diags, errAt(r.Range(a), "Invalid duration",
					"%s = %q is not a positive duration like \"10s\" or \"1m30s\".", a, r.String(a, "")))
				continue
			}
			durations[a] = d
		}
	}
	if at, ok := durations["attempt_timeout"]; ok {
		timeout := 30 * time.Second
		if d, ok := durations["timeout"]; ok {
			timeout = d
		}
		if at > timeout {
			diags = append(diags, errAt(r.Range("attempt_timeout"), "Invalid attempt_timeout",
				"attempt_timeout = %q is longer than the check's timeout (%v): one attempt cannot take longer than the whole check; raise timeout or lower attempt_timeout.", r.String("attempt_timeout", ""), timeout))
		}
	}
	return diags
}

func realizeActivationScripts(c *Realization, rs []*Resource) {
	scripts := map[string]bool{}
	for _, r := range rs {
		scripts[r.Name] = true
	}
	for _, r := range rs {
		var content []byte
		attr := "script"
		if r.Has("source") {
			attr = "source"
			var ok bool
			if content, ok = c.read(r, "source"); !ok {
				continue
			}
		} else {
			s := r.String("script", "")
			if !strings.HasPrefix(s, "#!") {
				s = "#!/bin/sh\nset -eu\n" + s
			}
			content = []byte(s)
		}
		for _, a := range r.Strings("after") {
			if !scripts[a] {
				c.diags = append(c.diags, errAt(r.Range("after"), "Unknown activation script",
					"Activation script %q runs after %q, which this host does not define.", r.Name, a))
			}
		}
		src := c.add(r, StoreName(r.Name, "script"), content, true, attr)
		c.Manifest.ActivationScripts = append(c.Manifest.ActivationScripts, manifest.ActivationScript{Name: r.Name, Source: src, After: r.Strings("after")})
	}
	c.diags = append(c.diags, checkScriptCycles(c.Manifest.ActivationScripts, rs)...)
}

func checkScriptCycles(scripts []manifest.ActivationScript, rs []*Resource) hcl.Diagnostics {
	after := map[string][]string{}
	for _, s := range scripts {
		after[s.Name] = s.After
	}
	state := map[string]int{}
	var cyc string
	var visit func(n string) bool
	visit = func(n string) bool {
		switch state[n] {
		case 1:
			cyc = n
			return true
		case 2:
			return false
		}
		state[n] = 1
		for _, a := range after[n] {
			if visit(a) {
				return true
			}
		}
		state[n] = 2
		return false
	}
	names := make([]string, 0, len(after))
	for n := range after {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if visit(n) {
			for _, r := range rs {
				if r.Name == cyc {
					return hcl.Diagnostics{errAt(r.Range("after"), "Activation script cycle",
						"Activation script %q runs, through its after list, after itself.", cyc)}
				}
			}
		}
	}
	return nil
}

func realizeHealthChecks(c *Realization, rs []*Resource) {
	for _, r := range rs {
		if HealthCheckType(r) == manifest.CheckPrometheus {
			c.Manifest.MetricGates = append(c.Manifest.MetricGates, metricGate(r))
			continue
		}
		h := manifest.HealthCheck{Name: r.Name, Type: HealthCheckType(r), URL: r.String("url", ""),
			Address: r.String("address", ""), Command: r.Strings("command"), Unit: r.String("unit", ""),
			TimeoutMS: durationMS(r.String("timeout", "30s")), IntervalMS: durationMS(r.String("interval", "1s"))}
		if r.Has("attempt_timeout") {
			h.AttemptTimeoutMS = durationMS(r.String("attempt_timeout", ""))
		}
		if h.Type == manifest.CheckHTTP {
			h.ExpectStatus = 200
			if s, ok := r.Int("expect_status"); ok {
				h.ExpectStatus = s
			}
		}
		c.Manifest.HealthChecks = append(c.Manifest.HealthChecks, h)
	}
}

func durationMS(s string) int64 {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0
	}
	return d.Milliseconds()
}
