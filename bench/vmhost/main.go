// Command vmhost boots vmtest hosts for benchmark scripts and holds them
// until it is sent SIGTERM or SIGINT (then it tears them down).
//
//	vmhost -n 1 -out DIR
//
// When the hosts are up it writes, in DIR: id (the client key root accepts),
// known_hosts (every host's key, by address), and env, a shell fragment
// setting NETNS (a path for `nsenter --net=`: the switch namespace, where
// the hosts' addresses are reachable) and HOSTS (their addresses). It
// prints "ready" on stdout last. Needs root (see vmtest).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/declarative/deploy/vmtest"
)

func main() {
	n := flag.Int("n", 1, "how many hosts")
	out := flag.String("out", "", "directory for id, known_hosts and env")
	flag.Parse()
	if *out == "" {
		log.Fatal("vmhost: -out is required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	nw, err := vmtest.Boot(ctx, *n, log.Printf)
	if err != nil {
		log.Fatal(err)
	}
	defer nw.Close()
	var known, addrs []string
	for _, h := range nw.Hosts {
		known = append(known, h.KnownHostsLine())
		addrs = append(addrs, h.Addr().String())
	}
	env := fmt.Sprintf("NETNS=%s\nHOSTS=%q\n", nw.SwitchNetNS(), strings.Join(addrs, " "))
	for name, data := range map[string][]byte{
		"id":          nw.ClientKeyPEM(),
		"known_hosts": []byte(strings.Join(known, "\n") + "\n"),
		"env":         []byte(env),
	} {
		if err := os.WriteFile(filepath.Join(*out, name), data, 0o600); err != nil {
			log.Print(err)
			return
		}
	}
	fmt.Println("ready")
	<-ctx.Done()
}
