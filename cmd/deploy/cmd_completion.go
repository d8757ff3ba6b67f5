package main

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/declarative/deploy/builder"
)

// runCompletion prints the completion script of a shell. The scripts ask
// `deploy __complete WORDS...` for the candidates, so they always match
// this binary's commands and flags and the fleet at hand.
func runCompletion(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "completion", "bash|zsh|fish")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	script, ok := completionScripts[pos[0]]
	if !ok {
		return usageErrorf("completion: unknown shell %q: want bash, zsh or fish", pos[0])
	}
	fmt.Fprint(e.stdout, script)
	return nil
}

var completionScripts = map[string]string{
	"bash": `# deploy completion for bash: source <(deploy completion bash)
_deploy() {
	local IFS=$'\n'
	COMPREPLY=($(deploy __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null))
}
complete -o default -F _deploy deploy
`,
	"zsh": `#compdef deploy
# deploy completion for zsh: source <(deploy completion zsh)
_deploy() {
	local -a candidates
	candidates=("${(@f)$(deploy __complete "${(@)words[2,CURRENT]}" 2>/dev/null)}")
	if (( ${#candidates[@]} )) && [[ -n ${candidates[1]} ]]; then
		compadd -Q -- "${candidates[@]}"
	else
		_files
	fi
}
if (( $+functions[compdef] )); then compdef _deploy deploy; fi
`,
	"fish": `# deploy completion for fish: deploy completion fish | source
function __deploy_complete
	set -l words (commandline -opc) (commandline -ct)
	deploy __complete $words[2..-1] 2>/dev/null
end
complete -c deploy -f -a '(__deploy_complete)'
`,
}

// targetCommands take fleet targets (DIR#NAME) as arguments.
var targetCommands = map[string]bool{
	"build": true, "eval": true, "closure": true, "image": true, "diff": true, "publish": true,
	"exec": true, "rollback": true, "generations": true, "status": true, "gc": true, "why-depends": true,
	"": true, // deploy TARGET...
}

// runComplete prints the candidates for the last of args, one per line:
// the words after "deploy" on the command line, the last being the one
// completed (possibly empty). Candidates are commands, subcommands, flags
// (--name), and targets of the fleet in the current directory (.#NAME,
// .#@TAG) or in the directory the word names (DIR#...).
func runComplete(_ context.Context, e *env, args []string) error {
	if len(args) == 0 {
		args = []string{""}
	}
	cur := args[len(args)-1]
	prev := args[:len(args)-1]
	var out []string
	cmd := ""
	if len(prev) > 0 {
		cmd = prev[0]
	}
	known := slices.ContainsFunc(commands(), func(c command) bool { return c.name == cmd })
	switch {
	case len(prev) == 0:
		if strings.HasPrefix(cur, "-") {
			out = commandFlags(e, nil)
		} else {
			for _, c := range commands() {
				out = append(out, c.name)
			}
			out = append(out, completeTargets(cur)...)
		}
	case !known:
		// deploy [flags] TARGET...
		if strings.HasPrefix(cur, "-") {
			out = commandFlags(e, nil)
		} else {
			out = completeTargets(cur)
		}
	default:
		subs := subcommands(e, cmd)
		switch {
		case len(subs) > 0 && len(prev) == 1:
			out = subs
		case strings.HasPrefix(cur, "-"):
			path := []string{cmd}
			if len(subs) > 0 {
				path = append(path, prev[1])
			}
			out = commandFlags(e, path)
		case targetCommands[cmd]:
			out = completeTargets(cur)
		}
	}
	for _, c := range out {
		if strings.HasPrefix(c, cur) {
			fmt.Fprintln(e.stdout, c)
		}
	}
	return nil
}

var flagLine = regexp.MustCompile(`(?m)^\s+-(\S+)`)

// commandFlags runs the command (path: command and subcommand; nil: the
// deploy command itself) with -h and reads its flags from the usage text.
// Commands parse their flags before doing anything, so -h has no effects.
func commandFlags(e *env, path []string) []string {
	var stderr, stdout bytes.Buffer
	sub := &env{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr, getenv: e.getenv}
	args := append(slices.Clone(path), "-h")
	if len(path) == 0 {
		runDeploy(context.Background(), sub, args)
	} else {
		for _, c := range commands() {
			if c.name == path[0] {
				c.run(context.Background(), sub, args[1:])
			}
		}
	}
	var out []string
	for _, m := range flagLine.FindAllStringSubmatch(stderr.String(), -1) {
		out = append(out, "--"+m[1])
	}
	return out
}

var subsLine = regexp.MustCompile(`usage: deploy \S+ \{([^}]*)\}`)

// subcommands returns the subcommands of a command group (store, nar,
// cache, secrets), read from its usage line.
func subcommands(e *env, cmd string) []string {
	for _, c := range commands() {
		if c.name != cmd {
			continue
		}
		var stderr, stdout bytes.Buffer
		c.run(context.Background(), &env{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr, getenv: e.getenv}, []string{"-h"})
		if m := subsLine.FindStringSubmatch(stderr.String()); m != nil {
			return strings.Split(m[1], "|")
		}
	}
	return nil
}

// completeTargets offers DIR#NAME for word: the hosts, deployments and
// @tags of the fleet in DIR (the current directory when word has no "#"),
// completing the last of a comma-separated list.
func completeTargets(word string) []string {
	dir, rest, ok := strings.Cut(word, "#")
	if !ok {
		dir, rest = ".", ""
	}
	if dir == "" {
		dir = "."
	}
	f, diags := builder.Load(dir)
	if f == nil || (diags.HasErrors() && len(f.Hosts) == 0) {
		return nil
	}
	head := ""
	if i := strings.LastIndexByte(rest, ','); i >= 0 {
		head = rest[:i+1]
	}
	prefix := dir + "#" + head
	if !ok {
		prefix = ".#"
	}
	var names []string
	tags := map[string]bool{}
	for _, h := range f.Hosts {
		names = append(names, h.Name)
		for _, t := range h.Tags {
			tags[t] = true
		}
	}
	for _, d := range f.Deployments {
		names = append(names, d.Name)
	}
	for t := range tags {
		names = append(names, "@"+t)
	}
	slices.Sort(names)
	var out []string
	for _, n := range slices.Compact(names) {
		out = append(out, prefix+n)
	}
	return out
}
