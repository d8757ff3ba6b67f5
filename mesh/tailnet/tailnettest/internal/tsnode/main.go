// Command tsnode is the test-only tailnet node that runs inside a test host:
// a tsnet node that forwards tailnet TCP port 22 to the host's sshd, plus
// plain TCP forwarders from the host's 127.0.0.1 to the test process's
// control and DERP servers (see package tailnettest). It is built by the
// tests (CGO_ENABLED=0) and never shipped.
//
//	tsnode -control URL -authkey-file F -hostname h1 -state DIR -ready FILE \
//	    -forward 127.0.0.1:P=10.231.0.1:Q ... [-ssh 127.0.0.1:22] [-v]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"tailscale.com/logtail"
	"tailscale.com/tsnet"
)

type forwards []string

func (f *forwards) String() string     { return strings.Join(*f, ",") }
func (f *forwards) Set(s string) error { *f = append(*f, s); return nil }

func main() {
	var fw forwards
	control := flag.String("control", "", "control `URL`")
	keyFile := flag.String("authkey-file", "", "auth key `file`")
	hostname := flag.String("hostname", "", "tailnet `name`")
	state := flag.String("state", "/var/lib/tsnode", "state `dir`")
	ready := flag.String("ready", "/run/tsnode.ready", "`file` written with the node's address once up")
	sshAddr := flag.String("ssh", "127.0.0.1:22", "where tailnet port 22 goes")
	verbose := flag.Bool("v", false, "tsnet's logs on stderr")
	flag.Var(&fw, "forward", "`local=remote` TCP forwarder (repeatable)")
	flag.Parse()
	log.SetPrefix("tsnode: ")

	for _, f := range fw {
		local, remote, ok := strings.Cut(f, "=")
		if !ok {
			log.Fatalf("bad -forward %q", f)
		}
		ln, err := net.Listen("tcp", local)
		if err != nil {
			log.Fatal(err)
		}
		go serve(ln, remote)
	}
	key, err := os.ReadFile(*keyFile)
	if err != nil {
		log.Fatal(err)
	}
	logtail.Disable()
	srv := &tsnet.Server{
		Dir:        *state,
		Hostname:   *hostname,
		ControlURL: *control,
		AuthKey:    strings.TrimSpace(string(key)),
		Logf:       func(string, ...any) {},
		UserLogf:   log.Printf,
	}
	if *verbose {
		srv.Logf = log.Printf
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	st, err := srv.Up(ctx)
	if err != nil {
		log.Fatal(err)
	}
	ln, err := srv.Listen("tcp", ":22")
	if err != nil {
		log.Fatal(err)
	}
	go serve(ln, *sshAddr)
	os.Remove(*ready)
	if err := os.WriteFile(*ready, fmt.Appendf(nil, "%s\n", st.TailscaleIPs[0]), 0o644); err != nil {
		log.Fatal(err)
	}
	log.Printf("up as %s (%s)", *hostname, st.TailscaleIPs[0])
	<-ctx.Done()
	os.Remove(*ready)
	srv.Close()
}

func serve(ln net.Listener, to string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Printf("accept: %v", err)
			return
		}
		go func() {
			defer c.Close()
			u, err := net.Dial("tcp", to)
			if err != nil {
				log.Printf("forward to %s: %v", to, err)
				return
			}
			defer u.Close()
			done := make(chan struct{}, 2)
			go func() { io.Copy(u, c); closeWrite(u); done <- struct{}{} }()
			go func() { io.Copy(c, u); closeWrite(c); done <- struct{}{} }()
			<-done
			<-done
		}()
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}
