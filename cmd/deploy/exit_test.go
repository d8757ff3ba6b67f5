package main

import (
	"errors"
	"flag"
	"fmt"
	"testing"

	"github.com/declarative/deploy/deploy"
	"github.com/declarative/deploy/mesh"
)

// report returns a run's report with the given results.
func runReport(results ...deploy.Result) *deploy.Report {
	rep := &deploy.Report{Hosts: map[string]*deploy.HostReport{}}
	for i, r := range results {
		name := fmt.Sprint("h", i)
		rep.Hosts[name] = &deploy.HostReport{Host: name, Result: r}
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
		{"session usage", &deploy.UsageError{Err: errors.New("two directories")}, ExitUsage},
		{"configuration", &deploy.ConfigError{}, ExitConfig},
		{"a local error", errors.New("disk full"), ExitConfig},
		{"all ok", runReport(deploy.ResultOK, deploy.ResultUnchanged, deploy.ResultPlanned).Err(), ExitOK},
		{"rolled back", runReport(deploy.ResultOK, deploy.ResultRolledBack, deploy.ResultSkipped).Err(), ExitRolledBack},
		{"failed", runReport(deploy.ResultFailed).Err(), ExitRolledBack},
		{"rolled back beats unreachable", runReport(deploy.ResultUnreachable, deploy.ResultRolledBack).Err(), ExitRolledBack},
		{"unreachable", runReport(deploy.ResultOK, deploy.ResultUnreachable).Err(), ExitUnreachable},
		{"unreachable beats locked", runReport(deploy.ResultLocked, deploy.ResultUnreachable).Err(), ExitUnreachable},
		{"locked", runReport(deploy.ResultLocked, deploy.ResultSkipped).Err(), ExitLocked},
		{"locked beats a failed command", runReport(deploy.ResultCommandFailed, deploy.ResultLocked).Err(), ExitLocked},
		{"command failed", runReport(deploy.ResultOK, deploy.ResultCommandFailed).Err(), ExitCommandFailed},
		{"refused", runReport(deploy.ResultOK, deploy.ResultRefused, deploy.ResultSkipped).Err(), ExitRefused},
		{"rolled back beats refused", runReport(deploy.ResultRefused, deploy.ResultRolledBack).Err(), ExitRolledBack},
		{"refused beats unreachable", runReport(deploy.ResultUnreachable, deploy.ResultRefused).Err(), ExitRefused},
		{"drifted", runReport(deploy.ResultOK, deploy.ResultDrifted).Err(), ExitDrifted},
		{"unreachable beats drifted", runReport(deploy.ResultDrifted, deploy.ResultUnreachable).Err(), ExitUnreachable},
		{"a failed command beats drifted", runReport(deploy.ResultDrifted, deploy.ResultCommandFailed).Err(), ExitCommandFailed},
		{"wrapped run error", fmt.Errorf("demo: %w", runReport(deploy.ResultRolledBack).Err()), ExitRolledBack},
		{"unreachable outside a run", &mesh.UnreachableError{Host: "h1", Err: errors.New("no route")}, ExitUnreachable},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got, _ := exitCode(tt.err); got != tt.want {
				t.Errorf("exitCode(%v) = %d, want %d", tt.err, got, tt.want)
			}
		})
	}
}
