// Package config loads, validates and generates opsbot.yaml, and derives the
// homeserver registration from it.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/external"
)

// Config is the whole of opsbot.yaml.
type Config struct {
	Homeserver Homeserver           `yaml:"homeserver"`
	AppService AppService           `yaml:"appservice"`
	Database   Database             `yaml:"database"`
	Encryption Encryption           `yaml:"encryption"`
	Bots       []Bot                `yaml:"bots"`
	Skills     map[string]yaml.Node `yaml:"skills"`
	// ExternalSkills are skills in any language, reached over HTTP.
	ExternalSkills []external.Config `yaml:"external_skills"`
	Permissions    Permissions       `yaml:"permissions"`
	Memory         Memory            `yaml:"memory"`
	Rooms          Rooms             `yaml:"rooms"`
	Metrics        Metrics           `yaml:"metrics"`
	Leader         Leader            `yaml:"leader"`
	Logging        Logging           `yaml:"logging"`
}

// Duration is a duration written as Go writes them (30s, 5m); the skills
// runtime defines it, so skills' own sections read durations the same way.
type Duration = skills.Duration

// Load reads, decodes and validates a config file. Environment overrides are
// applied before validation.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	cfg, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes and validates config text; see Load.
func Parse(data []byte) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	cfg := &Config{}
	if err := skills.DecodeStrict(&root, cfg, ""); err != nil {
		return nil, err
	}
	skills.ApplyEnv(cfg)
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// applyDefaults fills in what the file left out, section by section.
func (c *Config) applyDefaults() {
	c.AppService.applyDefaults()
	c.Database.applyDefaults()
	for i := range c.Bots {
		c.Bots[i].applyDefaults()
	}
	// The appservice's own user is the first appservice bot unless named.
	if c.AppService.SenderLocalpart == "" {
		if bots := c.AppServiceBots(); len(bots) > 0 {
			c.AppService.SenderLocalpart = bots[0].Localpart
		}
	}
	c.Rooms.applyDefaults()
	for i := range c.ExternalSkills {
		c.ExternalSkills[i].ApplyDefaults()
	}
	c.Permissions.applyDefaults()
	c.Encryption.applyDefaults()
	c.Leader.applyDefaults()
	c.Logging.applyDefaults()
}

// Validate checks every value and names the key of each bad one. Each
// section checks itself; crossCheck holds the checks that need two.
func (c *Config) Validate() error {
	return errors.Join(
		c.Homeserver.validate(),
		c.AppService.validate(c.HasAppServiceBots()),
		c.Database.validate(),
		c.Encryption.validate(),
		validateBots(c.Bots),
		c.Permissions.validate(),
		validateExternalSkills(c.ExternalSkills),
		c.Leader.validate(),
		c.Metrics.validate(),
		c.Logging.validate(),
		c.crossCheck(),
	)
}

// crossCheck holds the checks that read more than one section.
func (c *Config) crossCheck() error {
	var p problems
	for name := range c.Permissions.Skills {
		if !c.botRuns(name) {
			p.add("permissions.skills."+name, "no bot runs a skill named %q", name)
		}
	}
	for i, skill := range c.Memory.InRoomState {
		if !c.botRuns(skill) {
			p.add(fmt.Sprintf("memory.in_room_state[%d]", i), "no bot runs a skill named %q", skill)
		}
	}
	for i, b := range c.Bots {
		if b.IsClient() && b.Localpart == c.AppService.SenderLocalpart {
			p.add(fmt.Sprintf("bots[%d].account", i), "%q is appservice.sender_localpart, the appservice's own user: it cannot also be an ordinary account", b.Localpart)
		}
	}
	// Only a valid host:port can clash; Metrics.validate reports the rest.
	if _, _, err := net.SplitHostPort(c.Metrics.Listen); err == nil && c.Metrics.Listen == c.AppService.Listen {
		p.add("metrics.listen", "must differ from appservice.listen")
	}
	return p.err()
}

func validateExternalSkills(xs []external.Config) error {
	var p problems
	for i, x := range xs {
		p = append(p, x.Check(fmt.Sprintf("external_skills[%d]", i))...)
	}
	return p.err()
}

// problems collects what is wrong in a section, each naming its key.
type problems []error

func (p *problems) add(key, format string, args ...any) {
	*p = append(*p, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
}

// err joins the problems (nil entries, from sub-sections, are dropped).
func (p problems) err() error { return errors.Join(p...) }

// isUserID is a light check for "@local:server", enough to catch a missing
// "@" or server in config lists.
func isUserID(u string) bool { return strings.HasPrefix(u, "@") && strings.Contains(u, ":") }

// botRuns reports whether any bot lists the skill.
func (c *Config) botRuns(skill string) bool {
	for _, b := range c.Bots {
		if slices.Contains(b.Skills, skill) {
			return true
		}
	}
	return false
}

func checkHTTPURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL: %v", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%q must start with http:// or https://", s)
	}
	if u.Host == "" {
		return fmt.Errorf("%q has no host", s)
	}
	return nil
}

// AppServiceBots are the bots in the appservice's namespace (not client mode).
func (c *Config) AppServiceBots() []Bot {
	var out []Bot
	for _, b := range c.Bots {
		if !b.IsClient() {
			out = append(out, b)
		}
	}
	return out
}

// HasAppServiceBots reports whether opsbot runs as an appservice at all:
// with client-mode bots only, it needs no registration and no tokens.
func (c *Config) HasAppServiceBots() bool { return len(c.AppServiceBots()) > 0 }

// BotByID returns the configured bot with the full Matrix ID id.
func (c *Config) BotByID(id string) (Bot, bool) {
	for i, b := range c.BotIDs() {
		if b == id {
			return c.Bots[i], true
		}
	}
	return Bot{}, false
}

// BotIDs returns the full Matrix IDs of the configured bots, in config order.
func (c *Config) BotIDs() []string {
	ids := make([]string, len(c.Bots))
	for i, b := range c.Bots {
		ids[i] = "@" + b.Localpart + ":" + c.Homeserver.Domain
	}
	return ids
}
