package mesh

import (
	"maps"
	"sync"
)

// Counts counts the SSH connections a [Config] made and the sessions
// (channels: commands, SFTP) opened on them, per target: what a run costs
// each host, measured rather than read from the code. Its zero value is
// ready for use; set [Config.Counts] to a *Counts to count.
type Counts struct {
	mu     sync.Mutex
	byHost map[string]*HostCounts
}

// HostCounts is what [Counts] counted for one target.
type HostCounts struct {
	// Connections are SSH connections to the target (a connection through
	// jump hosts counts once).
	Connections int `json:"connections"`
	// Sessions are the sessions opened on them: each a command run (exec)
	// or an SFTP subsystem.
	Sessions int `json:"sessions"`
}

func (c *Counts) add(host string, conns, sessions int) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byHost == nil {
		c.byHost = map[string]*HostCounts{}
	}
	hc := c.byHost[host]
	if hc == nil {
		hc = &HostCounts{}
		c.byHost[host] = hc
	}
	hc.Connections += conns
	hc.Sessions += sessions
}

// Host returns the counts of one target (by [Target.Name], else its
// address).
func (c *Counts) Host(host string) HostCounts {
	c.mu.Lock()
	defer c.mu.Unlock()
	if hc := c.byHost[host]; hc != nil {
		return *hc
	}
	return HostCounts{}
}

// All returns the counts of every target counted.
func (c *Counts) All() map[string]HostCounts {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]HostCounts, len(c.byHost))
	for k, v := range maps.All(c.byHost) {
		out[k] = *v
	}
	return out
}

// countKey is how a target is counted: its name, else its address.
func countKey(t Target) string {
	if t.Name != "" {
		return t.Name
	}
	return t.Address
}
