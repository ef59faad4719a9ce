package config_test

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"opsbot/appservice/config"
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
		if !strings.Contains(text, "| `"+k+"` |") {
			t.Errorf("docs/configuration.md has no row for %s", k)
		}
	}
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z_.\\[\\]]+)` \\| ").FindAllStringSubmatch(text, -1) {
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
