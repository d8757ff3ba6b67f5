package main

import (
	"errors"
	"flag"
	"fmt"
	"testing"

	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/mesh"
)

// report returns a run's report with the given results.
func runReport(results ...fleet.Result) *fleet.Report {
	rep := &fleet.Report{Hosts: map[string]*fleet.HostReport{}}
	for i, r := range results {
		name := fmt.Sprint("h", i)
		rep.Hosts[name] = &fleet.HostReport{Host: name, Result: r}
	}
	return rep
}

func TestExitCode(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		want int
	}{
		{"success", nil, ExitOK},
		{"help", flag.ErrHelp, ExitOK},
		{"usage", usageErrorf("bad"), ExitUsage},
		{"session usage", &fleet.UsageError{Err: errors.New("two directories")}, ExitUsage},
		{"configuration", &fleet.ConfigError{}, ExitConfig},
		{"a local error", errors.New("disk full"), ExitConfig},
		{"all ok", runReport(fleet.ResultOK, fleet.ResultUnchanged, fleet.ResultPlanned).Err(), ExitOK},
		{"rolled back", runReport(fleet.ResultOK, fleet.ResultRolledBack, fleet.ResultSkipped).Err(), ExitRolledBack},
		{"failed", runReport(fleet.ResultFailed).Err(), ExitRolledBack},
		{"rolled back beats unreachable", runReport(fleet.ResultUnreachable, fleet.ResultRolledBack).Err(), ExitRolledBack},
		{"unreachable", runReport(fleet.ResultOK, fleet.ResultUnreachable).Err(), ExitUnreachable},
		{"unreachable beats locked", runReport(fleet.ResultLocked, fleet.ResultUnreachable).Err(), ExitUnreachable},
		{"locked", runReport(fleet.ResultLocked, fleet.ResultSkipped).Err(), ExitLocked},
		{"locked beats a failed command", runReport(fleet.ResultCommandFailed, fleet.ResultLocked).Err(), ExitLocked},
		{"command failed", runReport(fleet.ResultOK, fleet.ResultCommandFailed).Err(), ExitCommandFailed},
		{"refused", runReport(fleet.ResultOK, fleet.ResultRefused, fleet.ResultSkipped).Err(), ExitRefused},
		{"rolled back beats refused", runReport(fleet.ResultRefused, fleet.ResultRolledBack).Err(), ExitRolledBack},
		{"refused beats unreachable", runReport(fleet.ResultUnreachable, fleet.ResultRefused).Err(), ExitRefused},
		{"drifted", runReport(fleet.ResultOK, fleet.ResultDrifted).Err(), ExitDrifted},
		{"unreachable beats drifted", runReport(fleet.ResultDrifted, fleet.ResultUnreachable).Err(), ExitUnreachable},
		{"a failed command beats drifted", runReport(fleet.ResultDrifted, fleet.ResultCommandFailed).Err(), ExitCommandFailed},
		{"wrapped run error", fmt.Errorf("demo: %w", runReport(fleet.ResultRolledBack).Err()), ExitRolledBack},
		{"unreachable outside a run", &mesh.UnreachableError{Host: "h1", Err: errors.New("no route")}, ExitUnreachable},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got, _ := exitCode(tt.err); got != tt.want {
				t.Errorf("exitCode(%v) = %d, want %d", tt.err, got, tt.want)
			}
		})
	}
}
