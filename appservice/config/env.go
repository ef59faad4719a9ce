package config

import "github.com/opsbot/opsbot/skills"

// EnvOverrides are the environment variables that override secrets and
// connection strings, so Kubernetes Secrets never have to be written into
// the ConfigMap; then each external skill's secret. Parse applies them
// with skills.ApplyEnv, the way skills' settings get theirs.
func (c *Config) EnvOverrides() []skills.EnvOverride {
	out := []skills.EnvOverride{
		{Name: "OPSBOT_AS_TOKEN", Apply: func(v string) { c.AppService.ASToken = v }},
		{Name: "OPSBOT_HS_TOKEN", Apply: func(v string) { c.AppService.HSToken = v }},
		{Name: "OPSBOT_DATABASE_URI", Apply: func(v string) { c.Database.URI = v }},
		{Name: "OPSBOT_PICKLE_KEY", Apply: func(v string) { c.Encryption.PickleKey = v }},
		{Name: "OPSBOT_HOMESERVER_ADDRESS", Apply: func(v string) { c.Homeserver.Address = v }},
		{Name: "OPSBOT_DENDRITE_ADMIN_TOKEN", Apply: func(v string) { c.Encryption.DendriteAdminToken = v }},
	}
	for i := range c.Bots {
		// Only for bots the file puts in client mode: a variable alone
		// never turns an appservice bot into an ordinary account.
		if acc := c.Bots[i].Account; acc != nil {
			prefix := c.Bots[i].EnvPrefix()
			out = append(out,
				skills.EnvOverride{Name: prefix + "PASSWORD", Apply: func(v string) { acc.Password = v }},
				skills.EnvOverride{Name: prefix + "ACCESS_TOKEN", Apply: func(v string) { acc.AccessToken = v }})
		}
	}
	for i := range c.ExternalSkills {
		out = append(out, c.ExternalSkills[i].EnvOverrides()...)
	}
	return out
}

// EnvNames lists the environment variables Load reads whatever the config
// says, for docs and --help. Skills add variables named after their
// config (OPSBOT_SKILL_*, see skills.EnvName); those are documented with
// each skill.
func EnvNames() []string {
	var names []string
	for _, o := range (&Config{}).EnvOverrides() {
		names = append(names, o.Name)
	}
	return names
}
