package skills

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseCommandPattern(t *testing.T) {
	good := map[string]string{
		"ping":                        "!ping",
		"remind {duration} {text...}": "!remind <duration> <text...>",
		"help {command?}":             "!help [command]",
		"Deploy {app} to {env}":       "!deploy <app> to <env>",
		"log {lines?} {filter...?}":   "!log [lines] [filter...]",
	}
	for p, usage := range good {
		cp, err := parseCommandPattern(p)
		if err != nil {
			t.Errorf("%q: %v", p, err)
			continue
		}
		if got := cp.usage("!"); got != usage {
			t.Errorf("%q: usage %q, want %q", p, got, usage)
		}
	}
	bad := map[string]string{
		"":             "empty",
		"{x} ping":     "must start with the command word",
		"pi!ng":        "may contain only",
		"x {a...} {b}": "must be the last",
		"x {a} {a}":    "used twice",
		"x {a?} {b}":   "required {b} after an optional",
		"x {a?} lit":   "literal",
		"x {1a}":       "not a word",
		"x {a":         "malformed",
	}
	for p, want := range bad {
		if _, err := parseCommandPattern(p); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: want error containing %q, got %v", p, want, err)
		}
	}
}

func TestCommandMatch(t *testing.T) {
	cases := []struct {
		pattern, args string
		want          map[string]string
	}{
		{"remind {d} {text...}", "10m check  the deploy ", map[string]string{"d": "10m", "text": "check  the deploy"}},
		{"remind {d} {text...}", "10m", nil},
		{"deploy {app} to {env}", "web TO prod", map[string]string{"app": "web", "env": "prod"}},
		{"deploy {app} to {env}", "web at prod", nil},
		{"help {c?}", "", map[string]string{}},
		{"help {c?}", "x", map[string]string{"c": "x"}},
		{"help {c?}", "x y", nil},
		{"ping", "", map[string]string{}},
		{"log {n?} {f...?}", "5 error  only", map[string]string{"n": "5", "f": "error  only"}},
	}
	for _, c := range cases {
		cp, err := parseCommandPattern(c.pattern)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := cp.match(c.args)
		if c.want == nil {
			if ok {
				t.Errorf("%q on %q: matched %v, want no match", c.pattern, c.args, got)
			}
			continue
		}
		if !ok || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q on %q: got %v %v, want %v", c.pattern, c.args, got, ok, c.want)
		}
	}
}

func TestSplitCommand(t *testing.T) {
	cases := []struct {
		body, prefix, name, args string
		ok                       bool
	}{
		{"!ping", "!", "ping", "", true},
		{"!Remind 10m  x", "!", "remind", "10m  x", true},
		{"!ping\nmore lines", "!", "ping", "more lines", true},
		{"bot: ping", "bot: ", "ping", "", true},
		{"! ping", "!", "", "", false},
		{"!!", "!", "", "", false},
		{"!42", "!", "", "", false},
		{"ping", "!", "", "", false},
		{"!pi?ng", "!", "", "", false},
	}
	for _, c := range cases {
		name, args, ok := splitCommand(c.body, c.prefix)
		if name != c.name || args != c.args || ok != c.ok {
			t.Errorf("splitCommand(%q, %q) = %q, %q, %v", c.body, c.prefix, name, args, ok)
		}
	}
}
