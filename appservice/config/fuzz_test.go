package config

import "testing"

// FuzzParse feeds arbitrary text to the config loader: it returns a config
// or an error, never panics, and an accepted config validates.
func FuzzParse(f *testing.F) {
	f.Add(ExampleWithTokens("aaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbb"))
	f.Add("homeserver: {domain: x}\nbots: [{localpart: a}]")
	f.Add("bots: &a [*a]")
	f.Add("skills: {x: [1, {y: 2}]}")
	f.Fuzz(func(t *testing.T, text string) {
		cfg, err := Parse([]byte(text))
		if err != nil {
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that does not validate: %v", err)
		}
	})
}
