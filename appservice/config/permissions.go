package config

import "fmt"

// Permissions says who may do what with the bots.
type Permissions struct {
	// Invite lists who may invite a bot into a room. Empty lists mean
	// "users of our own homeserver".
	Invite InvitePolicy `yaml:"invite"`
	// Admins may use admin-only commands (!status).
	Admins []string `yaml:"admins"`
	// Skills restricts who may use each skill, by skill name.
	Skills map[string]SkillPolicy `yaml:"skills"`
	// RateLimit slows down people and rooms that send too many commands.
	RateLimit RateLimit `yaml:"rate_limit"`
}

// SkillPolicy allows and denies a skill by user, server, room and power
// level. Deny wins; empty allow lists allow everyone.
type SkillPolicy struct {
	AllowUsers    []string `yaml:"allow_users"`
	DenyUsers     []string `yaml:"deny_users"`
	AllowServers  []string `yaml:"allow_servers"`
	DenyServers   []string `yaml:"deny_servers"`
	AllowRooms    []string `yaml:"allow_rooms"`
	DenyRooms     []string `yaml:"deny_rooms"`
	MinPowerLevel int      `yaml:"min_power_level"`
	// RedactOthers lets the skill redact events the bot did not send;
	// RoomMentions lets its messages ping the whole room. Both off: a
	// skill acts on the bot's own messages and pings only whom it names.
	RedactOthers bool `yaml:"redact_others"`
	RoomMentions bool `yaml:"room_mentions"`
	// CommandTrust overrides encryption.command_trust for this skill
	// (for the admin skill, only to make it stricter).
	CommandTrust string `yaml:"command_trust"`
}

// RateLimit caps how many commands (and regex/parse matches) per minute a
// person, and a room, get answered. 0 turns a limit off.
type RateLimit struct {
	UserPerMinute *int `yaml:"user_per_minute"`
	RoomPerMinute *int `yaml:"room_per_minute"`
}

// InvitePolicy allows inviters by exact user ID or by server name.
type InvitePolicy struct {
	Users   []string `yaml:"users"`
	Servers []string `yaml:"servers"`
}

func (p *Permissions) applyDefaults() { p.RateLimit.applyDefaults() }

// validate leaves out whether a bot runs each skill named in
// permissions.skills: that needs the bots (Config.crossCheck).
func (p Permissions) validate() error {
	var errs problems
	for i, u := range p.Admins {
		if !isUserID(u) {
			errs.add(fmt.Sprintf("permissions.admins[%d]", i), "%q is not a user ID like @alice:example.org", u)
		}
	}
	for name, sp := range p.Skills {
		if sp.MinPowerLevel < 0 || sp.MinPowerLevel > 100 {
			errs.add("permissions.skills."+name+".min_power_level", "must be between 0 and 100")
		}
		if sp.CommandTrust != "" && !ValidCommandTrust(sp.CommandTrust) {
			errs.add("permissions.skills."+name+".command_trust", "%q must be all, cross-signed or verified", sp.CommandTrust)
		}
	}
	errs = append(errs, p.RateLimit.validate())
	for i, u := range p.Invite.Users {
		if !isUserID(u) {
			errs.add(fmt.Sprintf("permissions.invite.users[%d]", i), "%q is not a user ID like @alice:example.org", u)
		}
	}
	return errs.err()
}

func (r *RateLimit) applyDefaults() {
	if r.UserPerMinute == nil {
		n := 20
		r.UserPerMinute = &n
	}
	if r.RoomPerMinute == nil {
		n := 60
		r.RoomPerMinute = &n
	}
}

// validate expects applyDefaults to have run (it reads the pointers).
func (r RateLimit) validate() error {
	var p problems
	if *r.UserPerMinute < 0 || *r.RoomPerMinute < 0 {
		p.add("permissions.rate_limit", "limits must not be negative")
	}
	return p.err()
}
