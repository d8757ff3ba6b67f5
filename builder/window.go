package builder

import "github.com/declarative/deploy/agentapi"

// Window is a deployment's maintenance window ([agentapi.Window]: the
// hosts of pull mode read it from their releases).
type Window = agentapi.Window

// ParseWindow reads a deployment's window ([agentapi.ParseWindow]).
func ParseWindow(spec string) (*Window, error) { return agentapi.ParseWindow(spec) }
