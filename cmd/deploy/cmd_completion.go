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

// runComplete prints the candidates for the last of args, one per line:
// the words after "deploy" on the command line, the last being the one
// completed (possibly empty). Candidates are commands, subcommands, flags
// (--name), and, for commands that take targets, the targets of the fleet
// in the current directory (.#NAME, .#@TAG) or in the directory the word
// names (DIR#...).
func runComplete(_ context.Context, e *env, args []string) error {
	if len(args) == 0 {
		args = []string{""}
	}
	cur := args[len(args)-1]
	prev := args[:len(args)-1]
	flags := strings.HasPrefix(cur, "-")
	var out []string
	var c command
	known := len(prev) > 0
	if known {
		c, known = lookup(commands(), prev[0])
	}
	switch {
	case len(prev) == 0 && !flags:
		for _, c := range commands() {
			out = append(out, c.name)
		}
		out = append(out, completeTargets(cur)...)
	case !known:
		// deploy [flags] TARGET...
		if flags {
			out = commandFlags(e, nil)
		} else {
			out = completeTargets(cur)
		}
	case c.subs != nil && len(prev) == 1:
		for _, s := range c.subs {
			out = append(out, s.name)
		}
	default:
		path := []string{c.name}
		if c.subs != nil {
			if c, known = lookup(c.subs, prev[1]); !known {
				break
			}
			path = append(path, c.name)
		}
		if flags {
			out = commandFlags(e, path)
		} else if c.targets {
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
	if len(path) == 0 {
		runDeploy(context.Background(), sub, []string{"-h"})
	} else if c, ok := lookup(commands(), path[0]); ok {
		c.exec(context.Background(), sub, append(slices.Clone(path[1:]), "-h"))
	}
	var out []string
	for _, m := range flagLine.FindAllStringSubmatch(stderr.String(), -1) {
		out = append(out, "--"+m[1])
	}
	return out
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
