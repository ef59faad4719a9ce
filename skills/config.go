package skills

import (
	"fmt"

	"gopkg.in/yaml.v3"
)

// Config is a skill's own section of opsbot.yaml (skills.<name>).
type Config struct {
	name string
	node *yaml.Node
}

// NewConfig wraps a skill's config section (node nil: none in the file).
func NewConfig(name string, node *yaml.Node) Config {
	return Config{name: name, node: node}
}

// Present reports whether the config file has a section for this skill.
func (c Config) Present() bool { return c.node != nil && c.node.Kind != 0 }

// Decode decodes the section into v (a pointer to a struct with yaml tags).
// Unknown keys and wrong types are errors naming skills.<name>.<key>.
// A missing section leaves v as it is, so set defaults before calling.
// If v is an EnvOverrider, its environment overrides are applied next,
// section or not, so a secret may live in the environment alone.
func (c Config) Decode(v any) error {
	if c.Present() {
		if err := DecodeStrict(c.node, v, "skills."+c.name); err != nil {
			return err
		}
	}
	if o, ok := v.(EnvOverrider); ok {
		ApplyEnv(o)
	}
	return nil
}

// Errorf returns a config error that names this skill's section, for
// validation done by the skill itself.
func (c Config) Errorf(key, format string, args ...any) error {
	return fmt.Errorf("skills.%s.%s: %s", c.name, key, fmt.Sprintf(format, args...))
}
