package main

// Exit codes of deploy-agent (docs/activation.md). They match the deploy
// command's where the meaning is the same.
const (
	exitOK         = 0 // success
	exitFailed     = 1 // failure: activation failed (and could not roll back), or any other error
	exitUsage      = 2 // bad command line
	exitRolledBack = 3 // the activation failed or was not confirmed, and the previous generation was restored
	exitLockHeld   = 5 // another activation holds the lock
)

// exitError carries an exit code other than exitFailed.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }
