package config

import (
	"fmt"
	"regexp"
	"strings"
)

// Bot is one virtual user run by opsbot.
type Bot struct {
	Localpart     string   `yaml:"localpart"`
	Displayname   string   `yaml:"displayname"`
	Avatar        string   `yaml:"avatar"`
	CommandPrefix string   `yaml:"command_prefix"`
	Skills        []string `yaml:"skills"`
}

// DefaultCommandPrefix is a bot's command_prefix when it is left out.
const DefaultCommandPrefix = "!"

// localpartRe is the spec's grammar for user ID localparts (historical
// characters excluded: new users must use these).
var localpartRe = regexp.MustCompile(`^[a-z0-9._=/+-]+$`)

func (b *Bot) applyDefaults() {
	if b.CommandPrefix == "" {
		b.CommandPrefix = DefaultCommandPrefix
	}
}

// validate checks one bot; key is where it is ("bots[2]").
func (b Bot) validate(key string) error {
	var p problems
	if !localpartRe.MatchString(b.Localpart) {
		p.add(key+".localpart", "%q is not a valid localpart (lowercase letters, digits and ._=/+-)", b.Localpart)
	}
	if b.Avatar != "" && !strings.HasPrefix(b.Avatar, "mxc://") {
		p.add(key+".avatar", "%q must be an mxc:// URI", b.Avatar)
	}
	if strings.ContainsAny(b.CommandPrefix, " \t\n") {
		p.add(key+".command_prefix", "%q must not contain spaces", b.CommandPrefix)
	}
	dup := map[string]bool{}
	for j, s := range b.Skills {
		if dup[s] {
			p.add(fmt.Sprintf("%s.skills[%d]", key, j), "skill %q listed twice", s)
		}
		dup[s] = true
	}
	return p.err()
}

// validateBots checks the list: each bot, and that no two share a user.
func validateBots(bots []Bot) error {
	var p problems
	if len(bots) == 0 {
		p.add("bots", "at least one bot is required")
	}
	seen := map[string]bool{}
	for i, b := range bots {
		key := fmt.Sprintf("bots[%d]", i)
		if seen[b.Localpart] {
			p.add(key+".localpart", "%q is used by two bots", b.Localpart)
		}
		seen[b.Localpart] = true
		p = append(p, b.validate(key))
	}
	return p.err()
}
