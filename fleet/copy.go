package fleet

import (
	"context"
	"fmt"
	"time"

	"github.com/declarative/deploy/agentclient"
	"github.com/declarative/deploy/closure"
)

// Copy copies the closure of paths from local (and the agent, bootstrapped
// when missing) to every selected host (Parallel.Copy at once), sending
// only what each lacks; compress asks for zstd on the wire.
func (s *Session) Copy(ctx context.Context, local *closure.Store, paths []string, agent string, compress bool) (*Report, error) {
	rep := s.begin(ModePush, nil)
	defer s.end(rep)
	o, err := s.hosts(ctx)
	if err != nil {
		return rep, err
	}
	s.forEach(ctx, rep, s.names(), s.Parallel.copy(), func(ctx context.Context, hr *HostReport) {
		name := hr.Host
		s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseCopy, State: "started"})
		c := o.clients[name]
		c.Store = local
		var last time.Time
		res, err := c.Copy(ctx, paths, agent, agentclient.CopyOptions{
			Compress: compress,
			Progress: func(p closure.Progress) {
				if p.Done || time.Since(last) > 100*time.Millisecond {
					last = time.Now()
					s.emit(Event{Type: EventProgress, Host: name, Phase: PhaseCopy, Path: p.Path, Sent: p.Sent, Confirmed: p.Confirmed, Total: p.Total})
				}
			},
			Logf: func(format string, args ...any) {
				s.emit(Event{Type: EventLog, Host: name, Phase: PhaseCopy, Message: fmt.Sprintf(format, args...)})
			},
		})
		if err != nil {
			s.fail(hr, PhaseCopy, ResultUnreachable, err)
			return
		}
		hr.Result, hr.Phase = ResultOK, PhaseCopy
		hr.Push = &PushResult{Paths: res.Paths, Missing: res.Stats.Missing, Bytes: res.Stats.NarBytes}
		s.emit(Event{Type: EventPhase, Host: name, Phase: PhaseCopy, State: "done", Paths: res.Paths, CopyPaths: res.Stats.Missing, Total: res.Stats.NarBytes})
		s.finish(hr, Event{})
	})
	return rep, rep.Err()
}
