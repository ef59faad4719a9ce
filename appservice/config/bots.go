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
	// Account, if set, makes the bot an ordinary Matrix account (client
	// mode): opsbot logs in as it and receives its events through /sync,
	// with no appservice registration. Without it the bot is a user of
	// the appservice's namespace.
	Account *Account `yaml:"account"`
}

// Account is how a client-mode bot logs in. Either secret may come from the
// environment (EnvOverrides); with both, the token is used and the password
// answers the homeserver's password prompts (cross-signing) and logs in
// again if the token stops working.
type Account struct {
	Password    string `yaml:"password"`
	AccessToken string `yaml:"access_token"`
}

// IsClient reports whether the bot runs in client mode (an ordinary account).
func (b Bot) IsClient() bool { return b.Account != nil }

// Mode is "client" or "appservice", for logs and check.
func (b Bot) Mode() string {
	if b.IsClient() {
		return "client"
	}
	return "appservice"
}

// EnvPrefix is the start of the environment variables of a client-mode
// bot's secrets: OPSBOT_BOT_<LOCALPART>_ with the localpart in capitals and
// anything but letters and digits as "_".
func (b Bot) EnvPrefix() string {
	name := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, b.Localpart)
	return "OPSBOT_BOT_" + name + "_"
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
	if b.Account != nil && b.Account.Password == "" && b.Account.AccessToken == "" {
		p.add(key+".account", "a client-mode bot needs a password or an access_token (or %sPASSWORD / %sACCESS_TOKEN in the environment)",
			b.EnvPrefix(), b.EnvPrefix())
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
	envs := map[string]string{}
	for i, b := range bots {
		key := fmt.Sprintf("bots[%d]", i)
		if seen[b.Localpart] {
			p.add(key+".localpart", "%q is used by two bots", b.Localpart)
		}
		seen[b.Localpart] = true
		if other, ok := envs[b.EnvPrefix()]; ok && b.IsClient() && other != b.Localpart {
			p.add(key+".localpart", "%q and %q share the environment variables %s*: rename one", other, b.Localpart, b.EnvPrefix())
		}
		if b.IsClient() {
			envs[b.EnvPrefix()] = b.Localpart
		}
		p = append(p, b.validate(key))
	}
	return p.err()
}
