package agentapi

// Exit codes of deploy-agent. They match the deploy command's where the
// meaning is the same (docs/activation.md lists them).
const (
	ExitOK         = 0 // success
	ExitFailed     = 1 // failure: an activation that failed and could not roll back, or any other error
	ExitUsage      = 2 // a bad command line; also an unknown verb (see [Supports])
	ExitRolledBack = 3 // the activation failed or was not confirmed, and the previous generation runs again
	ExitLockHeld   = 5 // another activation holds the activation lock, or another run the run lock

	// ExitNoGzip is the exit code of the bootstrap upload's script on a
	// host without gzip; nothing was changed.
	ExitNoGzip = 98
	// ExitNoAgent is the exit code of a [Command] that found none of the
	// agents it may run on the host; nothing was run.
	ExitNoAgent = 99
)
