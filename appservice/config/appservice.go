package config

import (
	"net"
	"strings"
)

// AppService holds the appservice identity, listener and tokens.
type AppService struct {
	ID string `yaml:"id"`
	// Listen is the host:port of the HTTP listener for transactions, health
	// and skill webhooks.
	Listen string `yaml:"listen"`
	// PublicURL is how the homeserver reaches Listen; it goes into the
	// registration's url.
	PublicURL string `yaml:"public_url"`
	// SenderLocalpart is the appservice's own user; defaults to the first
	// appservice bot.
	SenderLocalpart string `yaml:"sender_localpart"`
	ASToken         string `yaml:"as_token"`
	HSToken         string `yaml:"hs_token"`
	// MaxBodyBytes caps the size of a pushed transaction.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// Workers is how many events are handled at once (each room's events
	// one after another).
	Workers int `yaml:"workers"`
}

// Defaults of the appservice section.
const (
	DefaultListen       = "127.0.0.1:29333"
	DefaultMaxBodyBytes = 16 << 20
)

// applyDefaults leaves SenderLocalpart alone: its default is the first bot
// (Config.applyDefaults).
func (a *AppService) applyDefaults() {
	if a.ID == "" {
		a.ID = "opsbot"
	}
	if a.Listen == "" {
		a.Listen = DefaultListen
	}
	if a.PublicURL == "" {
		a.PublicURL = "http://" + a.Listen
	}
	if a.Workers == 0 {
		a.Workers = 8
	}
	if a.MaxBodyBytes == 0 {
		a.MaxBodyBytes = DefaultMaxBodyBytes
	}
}

// validate checks the section; the tokens only when some bot is an
// appservice bot (client-mode bots need no registration).
func (a AppService) validate(needTokens bool) error {
	var p problems
	if a.ID == "" || strings.ContainsAny(a.ID, " /") {
		p.add("appservice.id", "%q must be a non-empty word", a.ID)
	}
	if _, _, err := net.SplitHostPort(a.Listen); err != nil {
		p.add("appservice.listen", "%q is not host:port", a.Listen)
	}
	if err := checkHTTPURL(a.PublicURL); err != nil {
		p.add("appservice.public_url", "%v", err)
	}
	if needTokens && len(a.ASToken) < 16 {
		p.add("appservice.as_token", "missing or shorter than 16 characters (set it in the file or in OPSBOT_AS_TOKEN)")
	}
	if needTokens && len(a.HSToken) < 16 {
		p.add("appservice.hs_token", "missing or shorter than 16 characters (set it in the file or in OPSBOT_HS_TOKEN)")
	}
	if a.ASToken != "" && a.ASToken == a.HSToken {
		p.add("appservice.hs_token", "must differ from as_token")
	}
	if a.Workers < 1 || a.Workers > 256 {
		p.add("appservice.workers", "%d is not between 1 and 256", a.Workers)
	}
	if a.MaxBodyBytes < 64<<10 {
		p.add("appservice.max_body_bytes", "%d is too small (at least 65536)", a.MaxBodyBytes)
	}
	if a.SenderLocalpart != "" && !localpartRe.MatchString(a.SenderLocalpart) {
		p.add("appservice.sender_localpart", "%q is not a valid localpart", a.SenderLocalpart)
	}
	return p.err()
}
