// Package policy applies permissions.skills (who may use which skill, by
// user, server, room and power level), permissions.rate_limit (how many
// commands a person and a room get answered per minute) and
// encryption.command_trust (from which devices commands are obeyed).
package policy

import (
	"context"
	"slices"
	"sync"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/skills"
)

// Policy decides for the skills engine.
type Policy struct {
	skills map[string]config.SkillPolicy
	// PowerLevel returns a user's power level in a room.
	PowerLevel func(ctx context.Context, room id.RoomID, user id.UserID) (int, error)

	userLimit, roomLimit int
	mu                   sync.Mutex
	windows              map[string]*window
	now                  func() time.Time

	// trust configures encryption.command_trust (Options.Trust); nil obeys all.
	trust *TrustOptions
}

// Ours: no rate limiter among the fixed dependencies (x/time/rate is not
// one of them); a fixed minute window is what gives one "slow down" a minute.
//
// window counts answers in the current minute for one user or room.
type window struct {
	start  time.Time
	count  int
	warned bool
}

// New builds the policy from the config.
func New(o Options) *Policy {
	p := o.Permissions
	pol := &Policy{skills: p.Skills, PowerLevel: o.PowerLevel,
		userLimit: *p.RateLimit.UserPerMinute, roomLimit: *p.RateLimit.RoomPerMinute,
		windows: map[string]*window{}, now: time.Now}
	if o.Trust != nil {
		t := *o.Trust
		if t.Answered == nil {
			t.Answered = skills.NewSeen()
		}
		pol.trust = &t
	}
	return pol
}

// Options configure a Policy.
type Options struct {
	// Permissions are the config's permissions section (rate limits set).
	Permissions config.Permissions
	// PowerLevel looks up a user's power level in a room (for
	// min_power_level).
	PowerLevel func(ctx context.Context, room id.RoomID, user id.UserID) (int, error)
	// Trust, if set, turns command trust on (encryption.command_trust);
	// nil obeys every device.
	Trust *TrustOptions
}

// Allow reports whether sender may use skill in room.
func (p *Policy) Allow(ctx context.Context, skill string, room id.RoomID, sender id.UserID) bool {
	sp, ok := p.skills[skill]
	if !ok {
		return true
	}
	_, server, _ := sender.Parse()
	user, r := sender.String(), room.String()
	if slices.Contains(sp.DenyUsers, user) || slices.Contains(sp.DenyServers, server) || slices.Contains(sp.DenyRooms, r) {
		return false
	}
	if len(sp.AllowUsers) > 0 && !slices.Contains(sp.AllowUsers, user) {
		return false
	}
	if len(sp.AllowServers) > 0 && !slices.Contains(sp.AllowServers, server) {
		return false
	}
	if len(sp.AllowRooms) > 0 && !slices.Contains(sp.AllowRooms, r) {
		return false
	}
	if sp.MinPowerLevel > 0 {
		if p.PowerLevel == nil {
			return false
		}
		pl, err := p.PowerLevel(ctx, room, sender)
		if err != nil || pl < sp.MinPowerLevel {
			return false
		}
	}
	return true
}

// Limit counts one answer for sender in room. ok is false when either is
// over its per-minute limit; warn is true the first time in a minute, so
// the bot says "slow down" once rather than at every message.
func (p *Policy) Limit(room id.RoomID, sender id.UserID) (ok, warn bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	okUser, warnUser := p.take("u:"+sender.String(), p.userLimit, now)
	okRoom, warnRoom := p.take("r:"+room.String(), p.roomLimit, now)
	if len(p.windows) > 10000 {
		p.sweep(now)
	}
	return okUser && okRoom, (!okUser && warnUser) || (!okRoom && warnRoom)
}

func (p *Policy) take(key string, limit int, now time.Time) (ok, warn bool) {
	if limit <= 0 {
		return true, false
	}
	w := p.windows[key]
	if w == nil || now.Sub(w.start) >= time.Minute {
		w = &window{start: now}
		p.windows[key] = w
	}
	w.count++
	if w.count <= limit {
		return true, false
	}
	warn = !w.warned
	w.warned = true
	return false, warn
}

// sweep forgets expired windows, bounding memory.
func (p *Policy) sweep(now time.Time) {
	for k, w := range p.windows {
		if now.Sub(w.start) >= time.Minute {
			delete(p.windows, k)
		}
	}
}
