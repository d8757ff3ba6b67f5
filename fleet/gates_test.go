package fleet

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/declarative/deploy/agentclient"
	"github.com/declarative/deploy/manifest"
)

// operatorGates evaluates only the gates with run_on operator, lengthens
// the host's confirmation timeout by their windows and query timeouts,
// and names the failing gate.
func TestOperatorGates(t *testing.T) {
	one := 1.0
	// An address nobody listens on: every query is refused.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + l.Addr().String()
	l.Close()
	gates := []manifest.MetricGate{
		{Name: "on-host", RunOn: manifest.GateOnHost, URL: url, Query: "up", Max: &one, WindowMS: 60000, IntervalMS: 1000, MinSamples: 1, QueryTimeoutMS: 1000},
		{Name: "on-operator", RunOn: manifest.GateOnOperator, URL: url, Query: "up", Max: &one, WindowMS: 20000, IntervalMS: 1000, MinSamples: 21, QueryTimeoutMS: 5000},
	}
	if check, timeout := operatorGates(gates[:1], 0, func(string) {}); check != nil || timeout != 0 {
		t.Errorf("operatorGates(host gates only) = %v, %v; want no check and the timeout unchanged", check != nil, timeout)
	}
	var lines []string
	check, timeout := operatorGates(gates, 10*time.Second, func(s string) { lines = append(lines, s) })
	if want := 10*time.Second + 25*time.Second; timeout != want {
		t.Errorf("confirm timeout = %v, want %v", timeout, want)
	}
	if _, timeout := operatorGates(gates, 0, func(string) {}); timeout != 55*time.Second {
		t.Errorf("confirm timeout with the default = %v, want 30s + 25s", timeout)
	}
	err = check(context.Background())
	var ce *agentclient.CheckError
	if !errors.As(err, &ce) || ce.Check != "on-operator" {
		t.Fatalf("check() = %v, want a CheckError of on-operator", err)
	}
	if len(lines) == 0 {
		t.Error("nothing logged")
	}
}
