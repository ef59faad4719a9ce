package config_test

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/opsbot/opsbot/appservice/config"
)

// configKeys lists every key of the config as docs/configuration.md writes
// them: "homeserver.domain", "bots[].localpart", "skills".
func configKeys(t reflect.Type, prefix string) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		key := prefix + name
		ft := f.Type
		switch {
		case ft.Kind() == reflect.Map && ft.Elem().Kind() == reflect.Struct:
			out = append(out, key)
			for _, k := range configKeys(ft.Elem(), key+".<skill>.") {
				out = append(out, k)
			}
		case ft.Kind() == reflect.Struct:
			out = append(out, configKeys(ft, key+".")...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			out = append(out, key)
			out = append(out, configKeys(ft.Elem(), key+"[].")...)
		default:
			out = append(out, key)
		}
	}
	return out
}

// docs/configuration.md must describe every key the code reads, and no key
// the code does not have.
func TestConfigurationDocMatchesCode(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	doc, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "docs", "configuration.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	code := map[string]bool{}
	for _, k := range configKeys(reflect.TypeOf(config.Config{}), "") {
		code[k] = true
		if !documented(text, k) {
			t.Errorf("docs/configuration.md has no row for %s", k)
		}
	}
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z_.<>\\[\\]]+)` \\| ").FindAllStringSubmatch(text, -1) {
		if strings.HasPrefix(m[1], "opsbot_") {
			continue
		}
		if !code[m[1]] {
			t.Errorf("docs/configuration.md documents %s, which the config does not have", m[1])
		}
	}
	for _, env := range config.EnvNames() {
		if !strings.Contains(text, "`"+env+"`") {
			t.Errorf("docs/configuration.md does not mention %s", env)
		}
	}
}

// documented finds a key's row; rows may group keys that differ only in
// their last part ("| `a.b.allow_users`, `deny_users` |").
func documented(text, key string) bool {
	if strings.Contains(text, "| `"+key+"` |") {
		return true
	}
	i := strings.LastIndex(key, ".")
	if i < 0 {
		return false
	}
	prefix, last := key[:i+1], key[i+1:]
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, "| `"+prefix) {
			continue
		}
		if cell := strings.SplitN(line, "|", 3)[1]; strings.Contains(cell, "`"+last+"`") || strings.Contains(cell, "`"+key+"`") {
			return true
		}
	}
	return false
}
