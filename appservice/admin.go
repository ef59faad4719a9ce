package appservice

// This file holds what admins do to a running opsbot: reload the skill
// configuration (SIGHUP, !reload) and read its status (!status).

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/policy"
	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/external"
)

// Engine returns the skills engine in use.
func (s *Service) Engine() *skills.Engine { return s.engine.Load() }

// buildEngine sets up the skills of a config: bots' skill lists, skill
// sections, permissions and rate limits.
func (s *Service) buildEngine(cfg *config.Config) (*skills.Engine, error) {
	pol := policy.New(policy.Options{
		Permissions: cfg.Permissions,
		PowerLevel: func(ctx context.Context, room id.RoomID, user id.UserID) (int, error) {
			return s.AS.StateStore.GetPowerLevel(ctx, room, user)
		},
		Trust: &policy.TrustOptions{Encryption: cfg.Encryption, Log: s.Log.With().Str("component", "command-trust").Logger(),
			Refused: s.Metrics.ObserveRefusal, Answered: s.answered},
	})
	specs := make([]skills.BotSpec, len(cfg.Bots))
	for i, b := range cfg.Bots {
		specs[i] = skills.BotSpec{ID: id.NewUserID(b.Localpart, cfg.Homeserver.Domain), Prefix: b.CommandPrefix, Skills: b.Skills, ConfigKey: fmt.Sprintf("bots[%d]", i)}
		s.Metrics.InitSkills(b.Skills)
	}
	return skills.NewEngine(skills.Options{
		Sender:    s.Outbox,
		Media:     s.Outbox,
		Rooms:     roomActions{s.Outbox, s},
		Schedules: s.Store,
		Allow:     pol.Allow,
		Limit:     pol.Limit,
		Trust:     pol.Trust,
		Memory:    s.memory,
		Log:       s.Log.With().Str("component", "skills").Logger(),
		Observe:   s.Metrics.ObserveSkill,
		Host:      engineHost{s, cfg},
		Privileges: func(skill string) skills.Privileges {
			p := cfg.Permissions.Skills[skill]
			return skills.Privileges{RedactOthers: p.RedactOthers, RoomMentions: p.RoomMentions}
		},
		// Webhook deliveries taken stay taken across reloads.
		Deliveries: s.deliveries,
	}, s.skillsFor(cfg), cfg.Skills, specs)
}

// skillsFor returns the skills a config can name: the Go skills compiled
// in and the config's external skills.
func (s *Service) skillsFor(cfg *config.Config) []skills.Skill {
	var all []skills.Skill
	if s.skills != nil {
		all = s.skills()
	}
	return append(all, external.FromConfig(cfg.ExternalSkills, s.Log.With().Str("component", "skills").Logger())...)
}

// engineHost is the skills.Host that the skills of one configuration see:
// its admins, and this service's status and reload.
type engineHost struct {
	s   *Service
	cfg *config.Config
}

func (h engineHost) Admins() []id.UserID {
	ids := make([]id.UserID, len(h.cfg.Permissions.Admins))
	for i, a := range h.cfg.Permissions.Admins {
		ids[i] = id.UserID(a)
	}
	return ids
}

func (h engineHost) Status(ctx context.Context) string          { return h.s.Status(ctx) }
func (h engineHost) Reload(ctx context.Context) (string, error) { return h.s.Reload(ctx) }

// Reload re-reads the config file and swaps in skills set up from it,
// without dropping transactions: events in flight finish on the old skills,
// later ones use the new. Only skill-related keys may change (skills,
// external_skills, bots[].skills and command_prefix, permissions.skills,
// rate_limit and admins, encryption.command_trust and
// command_trust_plain_rooms); anything else needs a restart and is refused.
func (s *Service) Reload(ctx context.Context) (string, error) {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	cfg, err := config.Load(s.ConfigPath)
	if err != nil {
		return "", err
	}
	if cfg.Homeserver.Address == "" { // discovered through .well-known at start
		cfg.Homeserver.Address = s.Cfg.Homeserver.Address
	}
	if what := restartNeeded(s.Cfg, cfg); what != "" {
		return "", fmt.Errorf("%s changed: that needs a restart; nothing was reloaded", what)
	}
	engine, err := s.buildEngine(cfg)
	if err != nil {
		return "", fmt.Errorf("the new skill configuration does not start, keeping the old one: %w", err)
	}
	s.engine.Store(engine)
	s.Cfg.Skills, s.Cfg.ExternalSkills, s.Cfg.Permissions = cfg.Skills, cfg.ExternalSkills, cfg.Permissions
	s.Cfg.Encryption.CommandTrust, s.Cfg.Encryption.CommandTrustPlainRooms = cfg.Encryption.CommandTrust, cfg.Encryption.CommandTrustPlainRooms
	for i := range s.Cfg.Bots {
		s.Cfg.Bots[i].Skills, s.Cfg.Bots[i].CommandPrefix = cfg.Bots[i].Skills, cfg.Bots[i].CommandPrefix
	}
	if s.stopSchedules != nil {
		s.stopSchedules()
		s.startSchedules(engine)
	}
	s.Log.Info().Str("bots", s.Bots.Describe()).Msg("Reloaded the skill configuration")
	s.Describe.RequestAll(s.Bots.IDs()) // commands may have come or gone
	return "Reloaded: " + s.Bots.Describe(), nil
}

// startSchedules runs an engine's cron jobs until the next reload or stop.
func (s *Service) startSchedules(e *skills.Engine) {
	ctx, cancel := context.WithCancel(s.workCtx)
	s.stopSchedules = cancel
	e.RunSchedules(ctx)
}

// restartNeeded names the first changed key that Reload cannot apply.
func restartNeeded(old, new *config.Config) string {
	type cryptoKeys struct {
		enabled          bool
		mode, key, trust string
	}
	switch {
	case old.Homeserver != new.Homeserver:
		return "homeserver"
	case old.AppService != new.AppService:
		return "appservice"
	case old.Database != new.Database:
		return "database"
	case cryptoKeys{old.Encryption.Enabled, old.Encryption.Mode, old.Encryption.PickleKey, old.Encryption.Trust} !=
		cryptoKeys{new.Encryption.Enabled, new.Encryption.Mode, new.Encryption.PickleKey, new.Encryption.Trust}:
		return "encryption"
	case !slices.Equal(old.Memory.InRoomState, new.Memory.InRoomState):
		return "memory"
	case *old.Rooms.LeaveUpgraded != *new.Rooms.LeaveUpgraded: // both set by applyDefaults
		return "rooms"
	case old.Metrics != new.Metrics || old.Logging != new.Logging:
		return "metrics or logging"
	case !slices.Equal(old.Permissions.Invite.Users, new.Permissions.Invite.Users) ||
		!slices.Equal(old.Permissions.Invite.Servers, new.Permissions.Invite.Servers):
		return "permissions.invite"
	case len(old.Bots) != len(new.Bots):
		return "the list of bots"
	}
	for i := range old.Bots {
		o, n := old.Bots[i], new.Bots[i]
		if o.Localpart != n.Localpart || o.Displayname != n.Displayname || o.Avatar != n.Avatar ||
			o.IsClient() != n.IsClient() || (o.IsClient() && *o.Account != *n.Account) {
			return fmt.Sprintf("bots[%d] (only skills and command_prefix reload)", i)
		}
	}
	return ""
}

// Status is a short report for admins (the admin skill's !status).
func (s *Service) Status(ctx context.Context) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s, up %s\n", s.version, time.Since(s.started).Round(time.Second))
	epoch := int64(0)
	if t := s.term.Load(); t != nil {
		epoch = t.Epoch()
	}
	fmt.Fprintf(&b, "leader: %v (epoch %d), inbox backlog: %d\n", s.accepting.Load(), epoch, s.Pipeline.Backlog())
	if parked := s.Pipeline.Parked(); len(parked) > 0 {
		fmt.Fprintf(&b, "rooms waiting: %d\n", len(parked))
		for i, p := range parked {
			if i == 5 {
				fmt.Fprintf(&b, "  and %d more\n", len(parked)-i)
				break
			}
			fmt.Fprintf(&b, "  %s %s, for %s\n", p.Room, p.Reason, time.Since(p.Since).Round(time.Second))
		}
	}
	if s.E2EE != nil {
		fmt.Fprintf(&b, "encryption: on, key delivery %s, %d bot devices\n", s.E2EE.Mode(), len(s.E2EE.Bots()))
	} else {
		b.WriteString("encryption: off\n")
	}
	for _, bot := range s.Bots.IDs() {
		rooms := 0
		if resp, err := s.Accounts.Client(bot).JoinedRooms(ctx); err == nil {
			rooms = len(resp.JoinedRooms)
		}
		mode := ""
		if s.Accounts.IsClient(bot) {
			mode = " (client mode)"
		}
		fmt.Fprintf(&b, "%s%s: %d rooms%s%s%s\n", bot, mode, rooms, s.identityStatus(bot), s.keyDeliveryStatus(bot), s.describeStatus(bot))
	}
	return strings.TrimRight(b.String(), "\n")
}

// describeStatus says in how many rooms a bot may not publish its command
// descriptions.
func (s *Service) describeStatus(bot id.UserID) string {
	if n := s.Describe.Forbidden(bot); n > 0 {
		return fmt.Sprintf(", may not publish its command descriptions in %d rooms (power level for %s)", n, event.StateMSC4391BotCommand.Type)
	}
	return ""
}

// keyDeliveryStatus says when a bot's device receives no keys.
func (s *Service) keyDeliveryStatus(bot id.UserID) string {
	if s.E2EE == nil || !strings.HasPrefix(s.E2EE.KeyDelivery()[bot], "none") {
		return ""
	}
	return ", receives no encryption keys (opsbot-appservice check says why)"
}

// identityStatus is a bot's cross-signing and key backup state for !status.
func (s *Service) identityStatus(bot id.UserID) string {
	if s.Identity == nil {
		return ""
	}
	st := s.Identity.Status(bot)
	switch {
	case !st.CrossSigned:
		return ", not cross-signed (see the log)"
	case st.BackupVersion == "":
		return ", cross-signed, no key backup"
	}
	return fmt.Sprintf(", cross-signed, key backup version %s", st.BackupVersion)
}
