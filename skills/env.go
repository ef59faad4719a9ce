package skills

import (
	"os"
	"strings"
)

// EnvOverride lets an environment variable replace one config value, so
// that secrets can come from a Kubernetes Secret or a systemd
// EnvironmentFile instead of the config file.
type EnvOverride struct {
	// Name is the variable, e.g. OPSBOT_AS_TOKEN or EnvName("webhook", hook, "token").
	Name string
	// Apply stores the variable's value in the config.
	Apply func(value string)
}

// EnvOverrider is a config (a skill's settings, the host's config) that
// declares which of its values the environment may override.
// Config.Decode applies a skill's settings' overrides after decoding.
type EnvOverrider interface {
	EnvOverrides() []EnvOverride
}

// ApplyEnv applies the overrides c declares whose variable is set and not
// empty (an empty variable leaves the file's value).
func ApplyEnv(c EnvOverrider) {
	for _, o := range c.EnvOverrides() {
		if v := os.Getenv(o.Name); v != "" {
			o.Apply(v)
		}
	}
}

// EnvName is the name of a skill's variable: OPSBOT_SKILL_ and the parts
// upper-cased with '-' as '_', joined by '_' (EnvName("webhook", "gh-hook",
// "token") is OPSBOT_SKILL_WEBHOOK_GH_HOOK_TOKEN).
func EnvName(parts ...string) string {
	upper := make([]string, len(parts))
	for i, p := range parts {
		upper[i] = strings.ToUpper(strings.ReplaceAll(p, "-", "_"))
	}
	return "OPSBOT_SKILL_" + strings.Join(upper, "_")
}
