package view

import (
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/fleet"
	"github.com/declarative/deploy/pull/channel"
)

// Results writes a line per host, in the order of hosts: name, result,
// the release serial (pull mode), generation and system.
func Results(w io.Writer, hosts []*builder.Host, rep *fleet.Report) {
	if rep == nil {
		return
	}
	for _, h := range hosts {
		hr := rep.Hosts[h.Name]
		if hr == nil {
			continue
		}
		line := fmt.Sprintf("%s\t%s", h.Name, hr.Result)
		if hr.Serial != 0 {
			line += fmt.Sprintf("\tserial %d", hr.Serial)
		}
		if hr.Generation != 0 {
			line += fmt.Sprintf("\tgeneration %d", hr.Generation)
		}
		fmt.Fprintln(w, line+"\t"+hr.System)
	}
}

// Systems writes the system path of each host that was built.
func Systems(w io.Writer, hosts []*builder.Host, rep *fleet.Report) {
	if rep == nil {
		return
	}
	for _, h := range hosts {
		if hr := rep.Hosts[h.Name]; hr != nil && hr.Result == fleet.ResultOK {
			fmt.Fprintln(w, hr.System)
		}
	}
}

// StatusTable writes the fleet table of deploy status: a row per host,
// with the DRIFT column when drift.
func StatusTable(w io.Writer, hosts []*builder.Host, rep *fleet.Report, drift bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "HOST\tREACHABLE\tGEN\tCOMMIT\tAGE\tBOOT\tPENDING\tFAILED\tCONSISTENT\tPUSHED\tRUN LOCK"
	if drift {
		head += "\tDRIFT"
	}
	fmt.Fprintln(tw, head)
	now := time.Now()
	// notes follow the table: each host's boot default that a trial
	// fell back to, and why.
	var notes []string
	for _, h := range hosts {
		hr := rep.Hosts[h.Name]
		st := hr.Status
		if st == nil {
			why := string(hr.Result)
			if hr.Err != nil {
				why = hr.Err.Error()
			}
			reach := "yes"
			if hr.Result == fleet.ResultUnreachable || hr.Result == fleet.ResultSkipped {
				reach = "no"
			}
			row := fmt.Sprintf("%s\t%s\t?\t?\t?\t?\t?\t?\t?\t?\t%s", h.Name, reach, why)
			if drift {
				row += "\t?"
			}
			fmt.Fprintln(tw, row)
			continue
		}
		lock := "-"
		if st.RunLock != nil {
			lock = st.RunLock.String()
		}
		pushed := "-"
		if len(st.Pushed) > 0 {
			// The newest, by its store path's name, and how many more.
			pushed = path.Base(st.Pushed[0].System) + " (" + st.Pushed[0].Time.Format(time.RFC3339) + ")"
			if len(st.Pushed) > 1 {
				pushed += fmt.Sprintf(" +%d", len(st.Pushed)-1)
			}
		}
		commit, age := "-", "-"
		if st.CurrentGitRev != "" {
			commit = st.CurrentGitRev[:min(12, len(st.CurrentGitRev))]
		}
		if !st.CurrentTime.IsZero() {
			age = ageString(now.Sub(st.CurrentTime))
		}
		current := dash(st.Current)
		if len(st.KeptSecrets) > 0 {
			current += " (kept secrets: " + strings.Join(st.KeptSecrets, ",") + ")"
		}
		boot := dash(st.Boot)
		if st.RebootRequired {
			boot += " (reboot required)"
		}
		if t := st.BootTrial; t != nil && t.Generation == st.Boot {
			boot += fmt.Sprintf(" (trial: %d of %d boots)", len(t.Attempts), t.MaxAttempts)
		}
		if rb := st.BootRollback; rb != nil && rb.Previous == st.Boot && rb.Previous != 0 {
			notes = append(notes, fmt.Sprintf("%s: boot default %d: %s", h.Name, st.Boot, rb.Message()))
		}
		failed := "-"
		if len(st.Failed) > 0 {
			failed = strings.Trim(fmt.Sprint(st.Failed), "[]")
		}
		row := fmt.Sprintf("%s\tyes\t%s\t%s\t%s\t%s\t%s\t%s\t%v\t%s\t%s", h.Name, current, commit, age, boot, dash(st.Pending), failed, st.Consistent, pushed, lock)
		if drift {
			switch d := st.Drift; {
			case d == nil:
				row += "\t?"
			case len(d.Items) == 0:
				row += "\tnone"
			default:
				row += fmt.Sprintf("\t%d: %s", len(d.Items), fleet.DriftSummary(d))
			}
		}
		fmt.Fprintln(tw, row)
	}
	tw.Flush()
	for _, n := range notes {
		fmt.Fprintln(w, n)
	}
}

// ageString renders a duration the way an operator reads an age: 45s,
// 12m, 5h, 3d.
func ageString(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", max(0, int(d.Seconds())))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// ChannelStatus writes deploy status --channel: the channel's last
// publish (head; nil when nothing was published), then a row per host with
// its wave, release and last report.
func ChannelStatus(w io.Writer, name string, head *agentapi.ChannelRelease, hosts []*builder.Host, rep *fleet.Report) {
	if head == nil {
		fmt.Fprintf(w, "channel %s: nothing published yet\n", name)
	} else {
		fmt.Fprintf(w, "channel %s: serial %d published %s", name, head.Serial, head.Published.Format(time.RFC3339))
		if head.Publisher != "" {
			fmt.Fprintf(w, " by %s", head.Publisher)
		}
		if head.GitRev != "" {
			fmt.Fprintf(w, " from commit %s", head.GitRev)
		}
		if head.Message != "" {
			fmt.Fprintf(w, " (%s)", head.Message)
		}
		fmt.Fprintln(w)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tWAVE\tRELEASE\tREPORTED\tOUTCOME\tGENERATION\tCHECK\tAT\tMESSAGE")
	for _, h := range hosts {
		hr := rep.Hosts[h.Name]
		row := []any{h.Name, dash(hr.Wave), dash64(hr.Serial)}
		st := hr.Pull
		var unverified *channel.StatusError
		if st == nil {
			// A status its host's key does not verify: what it claims is
			// not shown.
			msg, outcome := "never reported", "-"
			if hr.Err != nil {
				msg = hr.Err.Error()
			}
			if errors.As(hr.Err, &unverified) {
				outcome = "unverified"
			}
			row = append(row, "-", outcome, "-", "-", "-", msg)
		} else {
			msg := st.Message
			if st.Refused != nil && !st.Refused.Time.Before(st.Time.Add(-time.Second)) {
				msg = "refused a release: " + st.Refused.Reason
			}
			outcome := string(st.Outcome)
			if st.Stale != "" {
				outcome = "stale"
				msg = fmt.Sprintf("stale since %s: %s (at serial %d, %s)", st.StaleSince.Format(time.RFC3339), st.Stale, st.Serial, st.Outcome)
			}
			check := st.Check
			if check == "" {
				check = "-"
			}
			row = append(row, dash64(st.Serial), outcome, dash(st.Generation), check, st.Time.Format(time.RFC3339), msg)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", row...)
	}
	tw.Flush()
}

func dash(n int) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprint(n)
}

func dash64(n int64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprint(n)
}

// Generations writes deploy generations' table: a row per generation of
// each host.
func Generations(w io.Writer, hosts []*builder.Host, rep *fleet.Report) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tGEN\tTIME\tOPERATOR\tCOMMIT\tSTATE\tMESSAGE")
	for _, h := range hosts {
		for _, g := range rep.Hosts[h.Name].Generations {
			rev := g.GitRev
			if len(rev) > 12 {
				rev = rev[:12]
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", h.Name, g.Number, g.Time.Local().Format(time.DateTime), g.Operator, rev, strings.Join(g.Marks(), ","), g.Note())
		}
	}
	tw.Flush()
}

// Drift writes deploy verify's result: per host, no drift, or each
// difference from its generation on a line of its own.
func Drift(w io.Writer, hosts []*builder.Host, rep *fleet.Report) {
	for _, h := range hosts {
		hr := rep.Hosts[h.Name]
		d := hr.Drift
		switch {
		case d == nil:
			msg := string(hr.Result)
			if hr.Err != nil {
				msg += ": " + hr.Err.Error()
			}
			fmt.Fprintf(w, "%s: %s\n", h.Name, msg)
		case d.Generation == 0:
			fmt.Fprintf(w, "%s: runs no generation: nothing to compare\n", h.Name)
		case len(d.Items) == 0:
			fmt.Fprintf(w, "%s: no drift from generation %d\n", h.Name, d.Generation)
		default:
			fmt.Fprintf(w, "%s: drifted from generation %d:\n", h.Name, d.Generation)
			for _, it := range d.Items {
				fmt.Fprintf(w, "  %s\n", it)
			}
		}
	}
}

// GC writes deploy gc's result: a line per host with what it removed.
func GC(w io.Writer, hosts []*builder.Host, rep *fleet.Report) {
	for _, h := range hosts {
		if g := rep.Hosts[h.Name].GC; g != nil {
			images := ""
			if len(g.Images) > 0 {
				images = fmt.Sprintf(" and %d image roots", len(g.Images))
			}
			fmt.Fprintf(w, "%s\tremoved %d generations and %d pushed systems%s, deleted %d store paths, freed %s\n", h.Name, len(g.Generations), len(g.Pushed), images, g.Paths, Bytes(g.Bytes))
		}
	}
}

// Reboots writes deploy reboot's result: a line per host with its result,
// generation and error.
func Reboots(w io.Writer, hosts []*builder.Host, rep *fleet.Report) {
	for _, h := range hosts {
		hr := rep.Hosts[h.Name]
		line := fmt.Sprintf("%s\t%s", h.Name, hr.Result)
		if hr.Generation != 0 {
			line += fmt.Sprintf("\tgeneration %d", hr.Generation)
		}
		if hr.Err != nil {
			line += "\t" + hr.Err.Error()
		}
		fmt.Fprintln(w, line)
	}
}
