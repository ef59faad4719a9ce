package skills

import (
	"testing"
)

// FuzzCommand parses arbitrary command patterns and matches arbitrary
// messages against them: no panics, and a match fills every required field.
func FuzzCommand(f *testing.F) {
	f.Add("remind {duration} {text...}", "!remind 10m check it")
	f.Add("help {command?}", "!help")
	f.Add("deploy {app} to {env}", "!deploy web to prod")
	f.Add("log {n?} {f...?}", "!log")
	f.Add("{x}", "!!")
	f.Fuzz(func(t *testing.T, pattern, body string) {
		name, args, ok := splitCommand(body, "!")
		cp, err := parseCommandPattern(pattern)
		if err != nil {
			return
		}
		if cp.usage("!") == "" {
			t.Fatal("empty usage")
		}
		if !ok || name != cp.name {
			return
		}
		got, matched := cp.match(args)
		if !matched {
			return
		}
		for _, p := range cp.parts {
			if p.arg != "" && !p.optional && got[p.arg] == "" {
				t.Fatalf("pattern %q on %q: required {%s} empty", pattern, body, p.arg)
			}
		}
	})
}

// FuzzParse compiles arbitrary parse patterns and matches arbitrary text.
func FuzzParse(f *testing.F) {
	f.Add("remind me in {minutes:d} minutes to {task}", "remind me in 5 minutes to x")
	f.Add("rate {x:f}", "rate .5")
	f.Add("{a:w} {b}", "one two three")
	f.Fuzz(func(t *testing.T, pattern, body string) {
		pp, err := compileParse(pattern)
		if err != nil {
			return
		}
		args, values, ok := pp.match(body)
		if ok && len(args) != len(pp.fields) || ok && len(values) != len(pp.fields) {
			t.Fatalf("pattern %q on %q: %d fields, %d args", pattern, body, len(pp.fields), len(args))
		}
	})
}
