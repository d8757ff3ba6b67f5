package oci

import (
	"bufio"
	"errors"
	"fmt"
	"strings"
)

// ServiceConfig returns what an image of a closure runs to run the service
// whose unit file (as deploy renders it) is unit: ExecStart= as the
// entrypoint, Environment= as the environment, WorkingDirectory=. It
// refuses a service that already runs in an image (RootDirectory=), whose
// command is a path of that image, not of the closure. notes says what the
// image cannot carry over (User=, EnvironmentFile=, ExecStartPre=).
func ServiceConfig(unit string) (cfg ImageConfig, notes []string, err error) {
	section := ""
	var exec string
	sc := bufio.NewScanner(strings.NewReader(unit))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
			continue
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			continue
		}
		if section != "Service" {
			continue
		}
		key, value, _ := strings.Cut(line, "=")
		switch key {
		case "ExecStart":
			exec = value
		case "Environment":
			words, err := splitCommand(value, false)
			if err != nil {
				return cfg, nil, fmt.Errorf("unit line Environment=%s: %w", value, err)
			}
			cfg.Env = append(cfg.Env, words...)
		case "WorkingDirectory":
			cfg.WorkingDir = strings.TrimPrefix(value, "-")
		case "RootDirectory", "RootImage":
			return cfg, nil, fmt.Errorf("the service runs in an image (%s=%s): deploy image makes images of a closure's own programs", key, value)
		case "User":
			notes = append(notes, fmt.Sprintf("the image runs as root: User=%s is a user of the host", value))
		case "EnvironmentFile", "ExecStartPre", "ExecStartPost":
			notes = append(notes, fmt.Sprintf("%s=%s is not part of the image", key, value))
		}
	}
	if exec == "" {
		return cfg, nil, errors.New("the service has no ExecStart=")
	}
	argv, err := splitCommand(exec, true)
	if err != nil {
		return cfg, nil, fmt.Errorf("unit line ExecStart=%s: %w", exec, err)
	}
	cfg.Entrypoint = argv
	return cfg, notes, nil
}

// splitCommand splits a systemd command line or Environment= value into
// words: whitespace separates them, "..." and '...' quote (with C escapes
// inside double quotes), %% is %, and in a command $$ is $. A command's
// first word loses systemd's prefixes ("-", ":", "+", "!").
func splitCommand(s string, command bool) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '"' || c == '\'':
			inWord = true
			q := c
			i++
			for ; i < len(s) && s[i] != q; i++ {
				if s[i] == '\\' && q == '"' && i+1 < len(s) {
					i++
					switch s[i] {
					case 'n':
						cur.WriteByte('\n')
					case 't':
						cur.WriteByte('\t')
					default:
						cur.WriteByte(s[i])
					}
					continue
				}
				i = unescape(s, i, &cur, command)
			}
			if i >= len(s) {
				return nil, errors.New("unterminated quote")
			}
		case c == '\\' && i+1 < len(s):
			inWord = true
			i++
			cur.WriteByte(s[i])
		default:
			inWord = true
			i = unescape(s, i, &cur, command)
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	if command && len(words) > 0 {
		words[0] = strings.TrimLeft(words[0], "-:+!")
		if strings.HasPrefix(words[0], "@") {
			return nil, errors.New("the @ prefix (argv[0] apart from the program) is not supported")
		}
	}
	return words, nil
}

// unescape writes s[i] to b, turning %% into % (and $$ into $ in a
// command), and returns the index of the last byte it consumed.
func unescape(s string, i int, b *strings.Builder, command bool) int {
	if i+1 < len(s) && (s[i] == '%' || (command && s[i] == '$')) && s[i+1] == s[i] {
		b.WriteByte(s[i])
		return i + 1
	}
	b.WriteByte(s[i])
	return i
}
