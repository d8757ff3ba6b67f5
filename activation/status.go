package activation

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure"
)

// Status is what `deploy-agent status --json` prints.
type Status = agentapi.Status

// Status reports the current and boot generations, a pending activation
// and the failed generations.
func (l Layout) Status() (*Status, error) {
	st, err := l.ReadState()
	if err != nil {
		return nil, err
	}
	s := &Status{V: agentapi.Version, Failed: []int{}}
	s.Current, _ = l.CurrentGeneration()
	if s.Current > 0 {
		s.CurrentSystem = l.currentSystem()
	}
	if s.Boot, err = l.BootGeneration(); err != nil {
		return nil, err
	}
	gens, err := l.Generations()
	if err != nil {
		return nil, err
	}
	for _, g := range gens {
		if g.Failed {
			s.Failed = append(s.Failed, g.Number)
		}
		if g.Number == s.Boot {
			s.BootSystem = g.System
		}
		if g.Number == s.Current {
			s.CurrentTime, s.CurrentGitRev = g.Time, g.GitRev
		}
	}
	s.BootID = BootID()
	l.trialStatus(s)
	if s.Boot != 0 && s.Boot != s.Current {
		s.RebootRequired = true
		s.RebootReason = fmt.Sprintf("generation %d is the boot default; generation %d runs", s.Boot, s.Current)
	} else if s.CurrentSystem != "" {
		// Parameters set only at boot that the kernel does not have yet.
		if m, err := ReadManifest(s.CurrentSystem, closure.NewTargetStore(l.withDefaults().StateDir).RealPath); err == nil {
			var keys []string
			for _, sc := range m.Sysctls {
				if sc.Boot && !sysctlIs(sc) {
					keys = append(keys, sc.Key+" = "+sc.Value)
				}
			}
			if len(keys) > 0 {
				s.RebootRequired = true
				s.RebootReason = "set at the next boot: sysctl " + strings.Join(keys, ", sysctl ")
			}
		}
	}
	if a := st.Activation; a != nil {
		c := a.Activation
		s.Activation = &c
	}
	var lh *LockHeldError
	if err := l.CheckLock(); errors.As(err, &lh) {
		s.Lock = lh.Holder
		if s.Lock == nil {
			s.Lock = &Holder{}
		}
		// Only a live worker (holding the lock) has a pending activation.
		if a := st.Activation; a != nil {
			if a.Phase.InProgress() {
				s.Pending = a.Generation
			}
		}
	}
	s.RunLock = l.RunLockHolder()
	if pins, err := closure.NewTargetStore(l.withDefaults().StateDir).Pins(); err == nil {
		for _, p := range pins {
			s.Pushed = append(s.Pushed, agentapi.Pushed{System: p.Path, Time: p.Time})
		}
	}
	if rec, err := l.readApplied(); err == nil {
		s.Consistent = rec.Complete
		if rec.System == s.CurrentSystem {
			for name := range rec.KeptSecrets {
				s.KeptSecrets = append(s.KeptSecrets, name)
			}
			slices.Sort(s.KeptSecrets)
		}
	}
	if revoked, err := l.RevokedSecrets(); err == nil {
		s.RevokedSecrets = len(revoked)
	}
	return s, nil
}
