package builder

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// benchFleet returns a fleet of hosts, each applying role "big" with n
// resources: files, services, users, directories, sysctls, health checks and
// a path package that the services refer to.
func benchFleet(hosts, n int) map[string]string {
	var b strings.Builder
	for i := 0; i < hosts; i++ {
		fmt.Fprintf(&b, "host \"h%d\" {\n  address = \"10.1.%d.%d\"\n  roles = [role.big]\n}\n", i, i/250, i%250+1)
	}
	b.WriteString("role \"big\" {\n  variable \"port\" { default = 8000 }\n")
	b.WriteString("  package \"tool\" {\n    path = \"./tool\"\n  }\n")
	count := 1
	for i := 0; count < n; i++ {
		switch i % 10 {
		case 0, 1, 2, 3, 4:
			fmt.Fprintf(&b, "  file \"/etc/app/f%d.conf\" {\n    content = templatefile(\"t.tpl\", { i = %d, host = host.name, port = var.port + %d })\n    mode = \"0640\"\n  }\n", i, i, i)
		case 5, 6:
			fmt.Fprintf(&b, "  service \"s%d\" {\n    exec_start = \"${package.tool}/bin/tool --id %d --port ${var.port + %d}\"\n    environment = { ID = \"%d\" }\n    after = [\"network.target\"]\n  }\n", i, i, i, i)
		case 7:
			fmt.Fprintf(&b, "  user \"u%d\" {\n    system = true\n    groups = [\"g\"]\n  }\n", i)
		case 8:
			fmt.Fprintf(&b, "  directory \"/var/lib/d%d\" {\n    owner = \"root\"\n  }\n", i)
		case 9:
			fmt.Fprintf(&b, "  health_check \"c%d\" {\n    address = \"127.0.0.1:%d\"\n  }\n", i, 8000+i)
		}
		count++
	}
	b.WriteString("}\n")
	return map[string]string{
		"fleet.hcl":     b.String(),
		"t.tpl":         "id = ${i}\nhost = \"${host}\"\nport = ${port}\n",
		"tool/bin/tool": "#!/bin/sh\n",
	}
}

func benchSetup(b *testing.B, hosts, n int) (string, *Builder) {
	dir := writeFleet(b, benchFleet(hosts, n))
	return dir, newTestBuilder(b, b.TempDir())
}

func buildAll(b *testing.B, bl *Builder, dir string) {
	f, diags := Load(dir)
	if diags.HasErrors() {
		b.Fatal(diags)
	}
	for _, h := range f.Hosts {
		if _, diags := bl.Build(context.Background(), f, h.Name); diags.HasErrors() {
			b.Fatal(diags)
		}
	}
}

// BenchmarkBuild200Warm: load, evaluate and build one host of 200 resources
// whose store paths already exist (the common case: a redeploy).
func BenchmarkBuild200Warm(b *testing.B) {
	dir, bl := benchSetup(b, 1, 200)
	buildAll(b, bl, dir)
	b.ReportAllocs()
	for b.Loop() {
		buildAll(b, bl, dir)
	}
}

// BenchmarkBuild200Cold: the same into an empty store each time (every
// object imported and fsynced).
func BenchmarkBuild200Cold(b *testing.B) {
	dir, bl := benchSetup(b, 1, 200)
	buildAll(b, bl, dir) // the agent's store path, cached by the Builder
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		b.StopTimer()
		i++
		fresh := newTestBuilder(b, filepath.Join(b.TempDir(), fmt.Sprint(i)))
		b.StartTimer()
		buildAll(b, fresh, dir)
	}
}

// BenchmarkEvaluate200: load and evaluate only (what deploy check does per
// host, with placeholder packages).
func BenchmarkEvaluate200(b *testing.B) {
	dir, _ := benchSetup(b, 1, 200)
	b.ReportAllocs()
	for b.Loop() {
		f, diags := Load(dir)
		if diags.HasErrors() {
			b.Fatal(diags)
		}
		if diags := Check(context.Background(), f, ""); diags.HasErrors() {
			b.Fatal(diags)
		}
	}
}

// BenchmarkFleet50Warm: 50 hosts of 40 resources each, warm. Divide ns/op
// and B/op by 50 for the cost per host.
func BenchmarkFleet50Warm(b *testing.B) {
	dir, bl := benchSetup(b, 50, 40)
	buildAll(b, bl, dir)
	b.ReportAllocs()
	for b.Loop() {
		buildAll(b, bl, dir)
	}
}
