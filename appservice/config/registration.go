package config

import (
	"regexp"
	"slices"

	mas "maunium.net/go/mautrix/appservice"
)

// Registration derives the homeserver registration from the config: the
// appservice owns exactly the configured bot users, and asks for ephemeral
// events (typing, receipts, to-device) under both the stable and the MSC2409
// names so that homeservers of either vintage push them.
func (c *Config) Registration() *mas.Registration {
	rateLimited := false
	reg := &mas.Registration{
		ID:                  c.AppService.ID,
		URL:                 c.AppService.PublicURL,
		AppToken:            c.AppService.ASToken,
		ServerToken:         c.AppService.HSToken,
		SenderLocalpart:     c.AppService.SenderLocalpart,
		RateLimited:         &rateLimited,
		EphemeralEvents:     true,
		SoruEphemeralEvents: true,
	}
	localparts := []string{c.AppService.SenderLocalpart}
	for _, b := range c.Bots {
		if !slices.Contains(localparts, b.Localpart) {
			localparts = append(localparts, b.Localpart)
		}
	}
	for _, lp := range localparts {
		reg.Namespaces.UserIDs.Register(regexp.MustCompile("^"+regexp.QuoteMeta("@"+lp+":"+c.Homeserver.Domain)+"$"), true)
	}
	return reg
}
