package activation

import "errors"

// Status is what `deploy-agent status --json` prints.
type Status struct {
	// Current is the running generation (0: none) and CurrentSystem its
	// store path.
	Current       int    `json:"current"`
	CurrentSystem string `json:"current_system,omitempty"`
	// Boot is the boot default (0: none).
	Boot       int    `json:"boot"`
	BootSystem string `json:"boot_system,omitempty"`
	// Pending is the generation of an activation in progress (applying,
	// checking or awaiting confirmation), 0 when none.
	Pending int `json:"pending,omitempty"`
	// Failed lists generations marked failed.
	Failed []int `json:"failed"`
	// Activation is the last activation since boot (its token hash
	// removed).
	Activation *ActivationState `json:"activation,omitempty"`
	// Lock names the lock's holder when it is held.
	Lock *Holder `json:"lock,omitempty"`
	// Consistent is false while an application is incomplete (in progress,
	// or interrupted and not yet repaired by a rollback or the boot unit).
	Consistent bool `json:"consistent"`
}

// Status reports the current and boot generations, a pending activation
// and the failed generations.
func (l Layout) Status() (*Status, error) {
	st, err := l.ReadState()
	if err != nil {
		return nil, err
	}
	s := &Status{Failed: []int{}}
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
	}
	if a := st.Activation; a != nil {
		c := *a
		c.TokenHash = ""
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
			switch a.Phase {
			case PhaseStarting, PhaseApplying, PhaseChecking, PhaseAwaiting, PhaseRollingBack:
				s.Pending = a.Generation
			}
		}
	}
	if rec, err := l.readApplied(); err == nil {
		s.Consistent = rec.Complete
	}
	return s, nil
}
