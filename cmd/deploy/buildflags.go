package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/declarative/deploy/builder"
	"github.com/declarative/deploy/closure"
)

// buildFlags are the flags of commands that build: the store and the agent.
type buildFlags struct {
	store        storeFlags
	agent        string
	agentSrc     string
	noSubstitute bool
}

func (bf *buildFlags) register(fs *flag.FlagSet) {
	bf.store.register(fs)
	fs.StringVar(&bf.agent, "agent", "", "deploy-agent `binary` to ship (default: deploy-agent beside deploy)")
	fs.StringVar(&bf.agentSrc, "agent-src", "", "build deploy-agent from this source `directory` (a checkout of deploy)")
	fs.BoolVar(&bf.noSubstitute, "no-substitute", false, "build every go package here, even one the fleet's cache has a signed realisation of")
}

// builder returns a Builder on the local store, with the agent to ship.
func (bf *buildFlags) builder(e *env) (*builder.Builder, error) {
	b, err := bf.store.builder(e)
	if err != nil {
		return nil, err
	}
	b.NoSubstitute = bf.noSubstitute
	switch {
	case bf.agent != "" && bf.agentSrc != "":
		return nil, usageErrorf("--agent and --agent-src exclude each other")
	case bf.agentSrc != "":
		b.Agent.SourceDir = bf.agentSrc
	default:
		b.Agent.Binary = findAgent(bf.agent)
	}
	return b, nil
}

// storeFlags are the flags that select the local store.
type storeFlags struct {
	storeDir string
	cacheDir string
}

func (sf *storeFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&sf.storeDir, "store-dir", closure.DefaultStoreDir, "logical store `directory` that store paths name")
	fs.StringVar(&sf.cacheDir, "cache-dir", "", "local cache `directory` holding the store (default $XDG_CACHE_HOME/deploy)")
}

// builder returns a Builder on the local store, its downloads and Go
// builds cached beside it.
func (sf *storeFlags) builder(e *env) (*builder.Builder, error) {
	s, err := sf.open(e)
	if err != nil {
		return nil, err
	}
	return &builder.Builder{
		Store:    s,
		CacheDir: filepath.Join(filepath.Dir(s.RealDir), "build"),
		Logf:     func(format string, args ...any) { fmt.Fprintf(e.stderr, "deploy: "+format+"\n", args...) },
	}, nil
}

func (sf *storeFlags) open(e *env) (*closure.Store, error) {
	root := sf.cacheDir
	if root == "" {
		if x := e.getenv("XDG_CACHE_HOME"); x != "" {
			root = x + "/deploy"
		} else if h := e.getenv("HOME"); h != "" {
			root = h + "/.cache/deploy"
		} else {
			return nil, withHint(fmt.Errorf("no cache directory: neither XDG_CACHE_HOME nor HOME is set"), ExitUsage, "pass --cache-dir")
		}
	}
	s, err := closure.NewLocalStore(root, sf.storeDir)
	if err != nil {
		return nil, &exitError{code: ExitUsage, err: err}
	}
	return s, nil
}

// findAgent returns the deploy-agent to ship: flagValue (--agent) when
// set, else the one beside the running deploy, else "".
func findAgent(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	p := filepath.Join(filepath.Dir(exe), "deploy-agent")
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}
