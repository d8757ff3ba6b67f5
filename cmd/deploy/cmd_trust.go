package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/declarative/deploy/agentapi"
	"github.com/declarative/deploy/closure/cache"
	"github.com/declarative/deploy/fleet"
)

var trustCommands = []command{
	{name: "init", summary: "make version 1 of a channel's root of trust in DIR/trust/NAME (DIR --channel NAME --root KEY... --publisher KEY... --timestamp KEY...)", run: runTrustInit},
	{name: "rotate", summary: "make the next root version: add or remove keys, change thresholds or expiry, reset serials (DIR --channel NAME ...)", run: runTrustRotate},
	{name: "revoke", summary: "make the next root version without the named keys (DIR --channel NAME KEYNAME...)", run: runTrustRevoke},
	{name: "sign", summary: "add root key holders' signatures to the newest root version (DIR --channel NAME --sign FILE...)", run: runTrustSign},
	{name: "show", summary: "print a channel's newest root: roles, keys, thresholds, expiry, and whether it is signed enough (DIR --channel NAME)", run: runTrustShow},
}

// trustFlags are the flags of the deploy trust commands.
type trustFlags struct {
	channel    string
	sign       []string
	add        map[string][]string
	thresholds map[string]int
	expires    time.Duration
	reset      bool
}

func (f *trustFlags) register(fs *flag.FlagSet, change bool) {
	fs.StringVar(&f.channel, "channel", "", "the channel's `name`")
	fs.Func("sign", "a root secret key `file` to sign with (repeatable: each holder present signs; others use deploy trust sign)", func(v string) error {
		f.sign = append(f.sign, v)
		return nil
	})
	if !change {
		return
	}
	f.add, f.thresholds = map[string][]string{}, map[string]int{}
	for _, role := range []string{agentapi.RoleRoot, agentapi.RolePublisher, agentapi.RoleTimestamp} {
		fs.Func(role, fmt.Sprintf("add a %s public `key` (\"name:base64\", or a file holding it, as deploy cache key generate writes NAME.key.pub; repeatable)", role), func(v string) error {
			k, err := readPublicKey(v)
			f.add[role] = append(f.add[role], k)
			return err
		})
		fs.Func(role+"-threshold", fmt.Sprintf("how many %s keys must sign (`K`)", role), func(v string) error {
			var k int
			_, err := fmt.Sscan(v, &k)
			f.thresholds[role] = k
			return err
		})
	}
	fs.DurationVar(&f.expires, "expires", 0, "how long the new root is valid (default: a year for init; rotate keeps the expiry unless given)")
}

// readPublicKey is a public key given as "name:base64" or as a file
// holding it.
func readPublicKey(v string) (string, error) {
	if _, err := cache.ParsePublicKey(v); err == nil {
		return v, nil
	}
	data, err := os.ReadFile(v)
	if err != nil {
		return "", fmt.Errorf("%q is neither a public key (\"name:base64\") nor a readable file: %w", v, err)
	}
	pk, err := cache.ParsePublicKey(strings.TrimSpace(string(data)))
	if err != nil {
		return "", fmt.Errorf("%s: %w", v, err)
	}
	return pk.String(), nil
}

func (f *trustFlags) keys(e *env) ([]*cache.SecretKey, error) {
	var keys []*cache.SecretKey
	for _, file := range f.sign {
		k, err := loadKey(e, file, "", "root key", "deploy cache key generate NAME writes one")
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func (f *trustFlags) change() fleet.RootChange {
	return fleet.RootChange{Add: f.add, Thresholds: f.thresholds, Expires: f.expires, ResetSerial: f.reset}
}

// trustCommand parses a deploy trust command's flags: the fleet's
// directory and the rest of the arguments.
func trustCommand(e *env, name, usage string, f *trustFlags, change bool, args []string, minArgs, maxArgs int, more func(fs *flag.FlagSet)) (string, []string, []*cache.SecretKey, error) {
	fs := newFlags(e, "trust "+name, usage)
	f.register(fs, change)
	if more != nil {
		more(fs)
	}
	pos, err := parse(fs, args, minArgs, maxArgs)
	if err != nil {
		return "", nil, nil, err
	}
	if f.channel == "" {
		return "", nil, nil, usageErrorf("trust %s: --channel NAME is required", name)
	}
	keys, err := f.keys(e)
	if err != nil {
		return "", nil, nil, err
	}
	return pos[0], pos[1:], keys, nil
}

func runTrustInit(_ context.Context, e *env, args []string) error {
	var f trustFlags
	dir, _, keys, err := trustCommand(e, "init", "DIR --channel NAME --root KEY... --publisher KEY... --timestamp KEY... --sign FILE...", &f, true, args, 1, 1, nil)
	if err != nil {
		return err
	}
	rf, err := fleet.InitRoot(dir, f.channel, f.change(), keys)
	if err != nil {
		return &exitError{code: ExitUsage, err: fmt.Errorf("trust init: %w", err)}
	}
	return showRoot(e, rf)
}

func runTrustRotate(_ context.Context, e *env, args []string) error {
	var f trustFlags
	var remove []string
	dir, _, keys, err := trustCommand(e, "rotate", "DIR --channel NAME [--publisher KEY] [--remove NAME] [--reset-serial] ... --sign FILE...", &f, true, args, 1, 1, func(fs *flag.FlagSet) {
		fs.Func("remove", "remove the key `name`d from every role (repeatable)", func(v string) error { remove = append(remove, v); return nil })
		fs.BoolVar(&f.reset, "reset-serial", false, "hosts that accept this root forget their serial: recovery from a release with a huge serial signed by a key that leaked (revoke that key in the same version)")
	})
	if err != nil {
		return err
	}
	ch := f.change()
	ch.Remove = remove
	rf, err := fleet.RotateRoot(dir, f.channel, ch, keys)
	if err != nil {
		return &exitError{code: ExitUsage, err: fmt.Errorf("trust rotate: %w", err)}
	}
	return showRoot(e, rf)
}

func runTrustRevoke(_ context.Context, e *env, args []string) error {
	var f trustFlags
	dir, names, keys, err := trustCommand(e, "revoke", "DIR KEYNAME... --channel NAME --sign FILE...", &f, true, args, 2, -1, func(fs *flag.FlagSet) {
		fs.BoolVar(&f.reset, "reset-serial", false, "hosts that accept this root forget their serial (the revoked key signed a huge serial)")
	})
	if err != nil {
		return err
	}
	ch := f.change()
	ch.Remove = names
	rf, err := fleet.RotateRoot(dir, f.channel, ch, keys)
	if err != nil {
		return &exitError{code: ExitUsage, err: fmt.Errorf("trust revoke: %w", err)}
	}
	return showRoot(e, rf)
}

func runTrustSign(_ context.Context, e *env, args []string) error {
	var f trustFlags
	dir, _, keys, err := trustCommand(e, "sign", "DIR --channel NAME --sign FILE...", &f, false, args, 1, 1, nil)
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		return usageErrorf("trust sign: --sign FILE is required")
	}
	rf, err := fleet.SignRoot(dir, f.channel, keys)
	if err != nil {
		return &exitError{code: ExitUsage, err: fmt.Errorf("trust sign: %w", err)}
	}
	return showRoot(e, rf)
}

func runTrustShow(_ context.Context, e *env, args []string) error {
	var f trustFlags
	dir, _, _, err := trustCommand(e, "show", "DIR --channel NAME", &f, false, args, 1, 1, nil)
	if err != nil {
		return err
	}
	rf, err := fleet.ReadRoot(dir, f.channel)
	if err != nil {
		return &exitError{code: ExitUsage, err: fmt.Errorf("trust show: %w", err)}
	}
	return showRoot(e, rf)
}

// showRoot prints a root file; a root not signed enough yet is said so on
// stderr, with who must sign, and is exit 1.
func showRoot(e *env, rf *fleet.RootFile) error {
	r := rf.Root
	fmt.Fprintf(e.stdout, "channel %s root version %d, expires %s%s\n", r.Channel, r.Version, r.Expires.Format(time.RFC3339),
		map[bool]string{true: ", resets serials"}[r.ResetSerial])
	for _, role := range []string{agentapi.RoleRoot, agentapi.RolePublisher, agentapi.RoleTimestamp} {
		rr := r.Roles[role]
		fmt.Fprintf(e.stdout, "  %-10s %d of %d:", role, rr.Threshold, len(rr.Keys))
		for _, k := range rr.Keys {
			name, _, _ := strings.Cut(k, ":")
			fmt.Fprintf(e.stdout, " %s", name)
		}
		fmt.Fprintln(e.stdout)
	}
	fmt.Fprintf(e.stdout, "  signed by  %s\n", strings.Join(rf.Signers, ", "))
	fmt.Fprintf(e.stdout, "  file       %s\n", rf.Path)
	switch {
	case !rf.Self:
		return &exitError{code: ExitConfig, err: fmt.Errorf("root version %d is not signed by %d of its own root keys yet: deploy trust sign --sign FILE", r.Version, r.Roles[agentapi.RoleRoot].Threshold)}
	case !rf.Chain:
		return &exitError{code: ExitConfig, err: fmt.Errorf("root version %d is not signed by the root threshold of version %d yet (hosts would not accept it): deploy trust sign --sign FILE with the earlier root keys", r.Version, r.Version-1)}
	}
	return nil
}
