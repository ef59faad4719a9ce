package external

import (
	"fmt"
	"net/url"
	"regexp"
	"time"

	"github.com/opsbot/opsbot/skills"
)

// Config is one entry of external_skills in opsbot.yaml: a skill served by
// another process over HTTP. opsbot POSTs a signed JSON description of each
// matched event and performs the actions the JSON answer asks for
// (docs/skills.md#external-skills).
type Config struct {
	// Name is the skill's name in bots[].skills.
	Name string `yaml:"name"`
	// URL receives the POSTs.
	URL string `yaml:"url"`
	// Secret signs each request (HMAC-SHA256 of the body, header
	// X-Opsbot-Signature: sha256=<hex>). Also settable in the environment
	// (SecretEnv).
	Secret string `yaml:"secret"`
	// Commands, Regexes and Events say what the skill matches, like the
	// Go router's Command, Regex and Event.
	Commands []Command `yaml:"commands"`
	Regexes  []string  `yaml:"regexes"`
	Events   []string  `yaml:"events"`
	// Timeout bounds one request; Retries is how often a failed request
	// (network error or 5xx) is repeated with backoff.
	Timeout skills.Duration `yaml:"timeout"`
	Retries int             `yaml:"retries"`
}

// Command is one command of an external skill.
type Command struct {
	Pattern string `yaml:"pattern"`
	Help    string `yaml:"help"`
}

// SecretEnv names the variable that overrides an external skill's secret:
// OPSBOT_SKILL_<NAME>_SECRET, the name upper-cased, '-' as '_'.
func SecretEnv(name string) string { return skills.EnvName(name, "secret") }

// EnvOverrides lets the secret come from the environment; the host applies
// it with skills.ApplyEnv, as it does its own.
func (c *Config) EnvOverrides() []skills.EnvOverride {
	return []skills.EnvOverride{{Name: SecretEnv(c.Name), Apply: func(v string) { c.Secret = v }}}
}

// ApplyDefaults fills in what the file left out.
func (c *Config) ApplyDefaults() {
	if c.Timeout == 0 {
		c.Timeout = skills.Duration(DefaultTimeout)
	}
}

var nameRe = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,40}$`)

// Check returns what is wrong with the entry, each problem prefixed with
// its key under key (e.g. external_skills[2]). Patterns and regexes are
// checked when the skill is set up.
func (c Config) Check(key string) []error {
	var errs []error
	bad := func(k, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", k, fmt.Sprintf(format, args...)))
	}
	if !nameRe.MatchString(c.Name) {
		bad(key+".name", "%q must be a lowercase word (letters, digits, - and _)", c.Name)
	}
	if u, err := url.Parse(c.URL); err != nil {
		bad(key+".url", "%q is not a URL: %v", c.URL, err)
	} else if u.Scheme != "http" && u.Scheme != "https" {
		bad(key+".url", "%q must start with http:// or https://", c.URL)
	} else if u.Host == "" {
		bad(key+".url", "%q has no host", c.URL)
	}
	if len(c.Secret) < 16 {
		bad(key+".secret", "missing or shorter than 16 characters (set it in the file or in %s)", SecretEnv(c.Name))
	}
	if len(c.Commands)+len(c.Regexes)+len(c.Events) == 0 {
		bad(key, "matches nothing: give it commands, regexes or events")
	}
	if c.Timeout < 0 || time.Duration(c.Timeout) > 5*time.Minute {
		bad(key+".timeout", "must be between 0s and 5m")
	}
	if c.Retries < 0 || c.Retries > 10 {
		bad(key+".retries", "must be between 0 and 10")
	}
	return errs
}
