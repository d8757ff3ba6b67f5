package main

import (
	"github.com/declarative/deploy/internal/quickstart"
	"github.com/declarative/deploy/vmtest"
)

// demoFleet and editFile prepare and change the quickstart fleet for the
// end-to-end tests (package internal/quickstart, shared with
// cmd/deploy-demo).
func demoFleet(src, dir string, nw *vmtest.Network) error { return quickstart.Prepare(src, dir, nw) }

func editFile(p, old, new string) error { return quickstart.Edit(p, old, new) }
