package main

import (
	"os"

	"github.com/declarative/deploy/cmd/deploy/internal/view"
	"golang.org/x/term"
)

// newView picks the rendering of a command's events: --json → NDJSON on
// stdout; with live (commands that take a while: deploy, rollback, copy)
// and a terminal on stderr → the live table; otherwise plain lines on
// stderr.
func newView(e *env, asJSON, live bool) view.View {
	if asJSON {
		return view.JSON(e.stdout)
	}
	if f, ok := e.stderr.(*os.File); live && ok && term.IsTerminal(int(f.Fd())) && e.getenv("TERM") != "dumb" {
		return view.Live(f, e.getenv("NO_COLOR") != "")
	}
	return view.Plain(e.stderr)
}
