// Command scalefleet writes a fleet of N hosts of one role into a
// directory, for measuring the operator's side at scale (BENCHMARKS.md,
// "Scale"): one Go package, a file that differs per host, a service and an
// http health check per host; one deployment "all" in waves.
//
//	go run ./bench/scalefleet -hosts 1000 -waves 5 -out /tmp/fleet1000
//
// The hosts' addresses are 10.240.X.Y (nothing is contacted by build,
// check or publish).
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
)

func main() {
	hosts := flag.Int("hosts", 1000, "how many hosts")
	waves := flag.Int("waves", 5, "how many waves (the canary is the first)")
	out := flag.String("out", "", "the fleet's directory (created)")
	flag.Parse()
	if *out == "" || *hosts < 1 || *waves < 1 {
		flag.Usage()
		os.Exit(2)
	}
	if err := write(*out, *hosts, *waves); err != nil {
		log.Fatal(err)
	}
}

func write(dir string, n, waves int) error {
	if err := os.MkdirAll(filepath.Join(dir, "app"), 0o755); err != nil {
		return err
	}
	files := map[string]string{
		"app/go.mod": "module example.com/app\n\ngo 1.22\n",
		"app/main.go": `package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
)

func main() {
	addr := flag.String("addr", ":8080", "listen address")
	config := flag.String("config", "/etc/app/config", "configuration file")
	flag.Parse()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		data, _ := os.ReadFile(*config)
		fmt.Fprintf(w, "%s", data)
	})
	http.ListenAndServe(*addr, nil)
}
`,
	}
	var b strings.Builder
	b.WriteString(`role "app" {
  package "app" {
    go { src = "./app" }
  }
  file "/etc/app/config" {
    content = "host ${host.name}\n"
  }
  service "app" {
    exec_start = "${package.app}/bin/app -addr :8080 -config /etc/app/config"
    restart    = "always"
  }
  health_check "app" {
    url = "http://127.0.0.1:8080/"
  }
}

`)
	var names []string
	for i := range n {
		name := fmt.Sprintf("h%04d", i+1)
		names = append(names, fmt.Sprintf("%q", name))
		fmt.Fprintf(&b, "host %q {\n  address = \"10.240.%d.%d\"\n  roles   = [role.app]\n}\n", name, (i+1)/250, (i+1)%250+1)
	}
	// A canary, then the rest in waves-1 batches.
	batch := 1
	if waves > 1 {
		batch = (n - 1 + waves - 2) / (waves - 1)
	}
	fmt.Fprintf(&b, "\ndeployment \"all\" {\n  hosts      = [%s]\n  canary     = 1\n  batch_size = %d\n}\n", strings.Join(names, ", "), max(batch, 1))
	files["fleet.hcl"] = b.String()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}
