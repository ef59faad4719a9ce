// Package bots manages opsbot's virtual users: registering them with the
// homeserver, keeping their profiles in sync with the config, joining rooms
// they are invited to when the invite policy allows it, fetching a room's
// state after joining, and leaving rooms nobody else is in.
package bots

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	mas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/accounts"
	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/outbox"
)

// Store is what the manager keeps in the database: the profile last set
// for each bot, and room upgrades waiting for the bots to join.
type Store interface {
	BotProfile(ctx context.Context, userID id.UserID) (displayname, avatar string, err error)
	SetBotProfile(ctx context.Context, userID id.UserID, displayname, avatar string) error
	RecordUpgrade(ctx context.Context, oldRoom, newRoom id.RoomID) error
	UpgradeOf(ctx context.Context, newRoom id.RoomID) (id.RoomID, error)
	FinishUpgrade(ctx context.Context, newRoom id.RoomID) error
}

// MemoryMover moves skill memory from a room to its replacement.
type MemoryMover func(ctx context.Context, oldRoom, newRoom id.RoomID) error

// Options configure a Manager.
type Options struct {
	// Config gives the bots, the domain, permissions.invite and
	// rooms.leave_upgraded.
	Config *config.Config
	// AS registers the appservice bots; its state store knows the rooms.
	AS *mas.AppService
	// Accounts gives each bot what it acts through.
	Accounts *accounts.Accounts
	Profiles Store
	Log      zerolog.Logger
	// MoveMemory, if set, carries skill memory over a room upgrade.
	MoveMemory MemoryMover
	// OnJoined, if set, is called after a bot joined a room and fetched its state.
	OnJoined func(ctx context.Context, bot id.UserID, room id.RoomID)
}

// Manager runs the configured bots.
type Manager struct {
	as         *mas.AppService
	accounts   *accounts.Accounts
	profiles   Store
	log        zerolog.Logger
	moveMemory MemoryMover
	onJoined   func(ctx context.Context, bot id.UserID, room id.RoomID)
	// leaveUpgraded makes bots leave a room they followed to its replacement.
	leaveUpgraded bool
	bots          []config.Bot
	ids           []id.UserID
	domain        string
	invite        config.InvitePolicy
}

// New returns a manager for the bots in opts.Config.
func New(opts Options) *Manager {
	cfg := opts.Config
	m := &Manager{as: opts.AS, accounts: opts.Accounts, profiles: opts.Profiles, log: opts.Log, moveMemory: opts.MoveMemory, onJoined: opts.OnJoined,
		bots: cfg.Bots, domain: cfg.Homeserver.Domain, invite: cfg.Permissions.Invite,
		leaveUpgraded: cfg.Rooms.LeaveUpgraded == nil || *cfg.Rooms.LeaveUpgraded}
	for _, b := range cfg.Bots {
		m.ids = append(m.ids, id.NewUserID(b.Localpart, cfg.Homeserver.Domain))
	}
	return m
}

// IDs returns the bots' user IDs in config order.
func (m *Manager) IDs() []id.UserID { return m.ids }

// IsBot reports whether userID is one of our bots.
func (m *Manager) IsBot(userID id.UserID) bool { return slices.Contains(m.ids, userID) }

// Start registers every appservice bot (client-mode bots are logged in
// already, appservice/accounts) and brings each bot's profile in line with
// the config.
func (m *Manager) Start(ctx context.Context) error {
	for i, b := range m.bots {
		userID := m.ids[i]
		if !b.IsClient() {
			intent := m.as.Intent(userID)
			err := outbox.Retry(ctx, m.log, "register "+userID.String(), time.Second, 30*time.Second, func() error {
				return intent.EnsureRegistered(ctx)
			})
			if err != nil {
				return fmt.Errorf("registering bot %s: %w", userID, err)
			}
		}
		if err := m.syncProfile(ctx, userID, b); err != nil {
			return fmt.Errorf("setting the profile of bot %s: %w", userID, err)
		}
		m.learnRooms(ctx, userID)
		m.log.Info().Stringer("bot", userID).Str("mode", b.Mode()).Strs("skills", b.Skills).Msg("Bot ready")
	}
	return nil
}

func (m *Manager) syncProfile(ctx context.Context, bot id.UserID, b config.Bot) error {
	actor := m.accounts.Actor(bot)
	name, avatar, err := m.profiles.BotProfile(ctx, bot)
	if err != nil {
		return err
	}
	if name == b.Displayname && avatar == b.Avatar {
		return nil
	}
	if b.Displayname != name {
		if err := actor.SetDisplayName(ctx, b.Displayname); err != nil {
			return fmt.Errorf("displayname: %w", err)
		}
	}
	if b.Avatar != avatar {
		uri, err := id.ParseContentURI(b.Avatar)
		if b.Avatar != "" && err != nil {
			return fmt.Errorf("avatar %q: %w", b.Avatar, err)
		}
		if err := actor.SetAvatarURL(ctx, uri); err != nil {
			return fmt.Errorf("avatar: %w", err)
		}
	}
	m.log.Info().Stringer("bot", bot).Str("displayname", b.Displayname).Msg("Updated bot profile")
	return m.profiles.SetBotProfile(ctx, bot, b.Displayname, b.Avatar)
}

// learnRooms fetches the state of rooms the bot is in but the state store
// does not know (a new or restored database), so that the bot answers there
// again without being re-invited.
func (m *Manager) learnRooms(ctx context.Context, bot id.UserID) {
	resp, err := m.accounts.Client(bot).JoinedRooms(ctx)
	if err != nil {
		m.log.Warn().Err(err).Stringer("bot", bot).Msg("Could not list the bot's rooms")
		return
	}
	learned := 0
	for _, room := range resp.JoinedRooms {
		if m.as.StateStore.IsInRoom(ctx, room, bot) {
			continue
		}
		if err := m.FetchState(ctx, bot, room); err != nil {
			m.log.Warn().Err(err).Stringer("bot", bot).Stringer("room_id", room).Msg("Could not fetch the state of a joined room")
			continue
		}
		learned++
	}
	if learned > 0 {
		m.log.Info().Stringer("bot", bot).Int("rooms", learned).Msg("Learned rooms the bot was already in")
	}
}

// mayInvite applies permissions.invite: an explicit user list or server
// list, or by default the users of our own homeserver.
func (m *Manager) mayInvite(inviter id.UserID) bool {
	_, server, err := inviter.Parse()
	if err != nil {
		return false
	}
	if len(m.invite.Users) == 0 && len(m.invite.Servers) == 0 {
		return server == m.domain
	}
	return slices.Contains(m.invite.Users, inviter.String()) || slices.Contains(m.invite.Servers, server)
}

// HandleMember reacts to membership events about our bots and to people
// leaving rooms our bots are in. The state store has already been updated.
func (m *Manager) HandleMember(ctx context.Context, evt *event.Event) {
	content, ok := evt.Content.Parsed.(*event.MemberEventContent)
	if !ok || evt.StateKey == nil {
		return
	}
	target := id.UserID(*evt.StateKey)
	log := m.log.With().Stringer("room_id", evt.RoomID).Stringer("sender", evt.Sender).Logger()
	if !m.IsBot(target) {
		if content.Membership.IsLeaveOrBan() {
			m.leaveIfAlone(ctx, evt.RoomID)
		}
		return
	}
	switch content.Membership {
	case event.MembershipInvite:
		// An invite to the replacement of an upgraded room is judged like
		// any other: whoever sends the tombstone picks the replacement,
		// and may not pick who may invite the bots.
		if !m.mayInvite(evt.Sender) {
			log.Warn().Stringer("bot", target).Msg("Rejected invite from a user not allowed by permissions.invite")
			_, err := m.accounts.Actor(target).LeaveRoom(ctx, evt.RoomID, &mautrix.ReqLeave{
				Reason: "Sorry, you are not allowed to invite this bot. Ask the opsbot admin to add you to permissions.invite.",
			})
			if err != nil {
				log.Error().Err(err).Msg("Could not reject invite")
			}
			return
		}
		m.join(ctx, log, target, evt.RoomID)
	case event.MembershipLeave, event.MembershipBan:
		if evt.Sender != target {
			log.Info().Stringer("bot", target).Str("membership", string(content.Membership)).Str("reason", content.Reason).Msg("Bot was removed from a room")
		}
	}
}

func (m *Manager) join(ctx context.Context, log zerolog.Logger, bot id.UserID, room id.RoomID) {
	actor := m.accounts.Actor(bot)
	err := outbox.Retry(ctx, log, "join", time.Second, 30*time.Second, func() error {
		_, err := actor.JoinRoomByID(ctx, room)
		return err
	})
	if err != nil {
		log.Error().Err(err).Stringer("bot", bot).Msg("Could not join room after invite")
		return
	}
	if err := m.FetchState(ctx, bot, room); err != nil {
		log.Error().Err(err).Stringer("bot", bot).Msg("Joined, but could not fetch the room state")
	}
	log.Info().Stringer("bot", bot).Msg("Joined room")
	m.finishUpgrade(ctx, bot, room)
	if m.onJoined != nil {
		m.onJoined(ctx, bot, room)
	}
}

// HandleTombstone follows a room upgrade: every bot in the old room joins
// the replacement (or, when it is invite-only, waits for an invite there,
// which permissions.invite judges like any other). Anyone who may send the
// tombstone can name any room, so a replacement is followed only if its
// create event names the old room as its predecessor; otherwise the bot
// leaves it again. Skill memory moves once a bot is in the new room.
func (m *Manager) HandleTombstone(ctx context.Context, evt *event.Event, roomBots []id.UserID) {
	content, ok := evt.Content.Parsed.(*event.TombstoneEventContent)
	if !ok || content.ReplacementRoom == "" || evt.GetStateKey() != "" {
		return
	}
	newRoom := content.ReplacementRoom
	log := m.log.With().Stringer("room_id", evt.RoomID).Stringer("replacement", newRoom).Stringer("sender", evt.Sender).Logger()
	log.Info().Msg("Room was upgraded; following it")
	if err := m.profiles.RecordUpgrade(ctx, evt.RoomID, newRoom); err != nil {
		log.Error().Err(err).Msg("Could not record the room upgrade")
		return
	}
	_, server, _ := evt.Sender.Parse()
	for _, bot := range roomBots {
		actor := m.accounts.Actor(bot)
		_, err := actor.JoinRoom(ctx, newRoom.String(), &mautrix.ReqJoinRoom{Via: []string{server}})
		if err != nil {
			log.Info().Err(err).Stringer("bot", bot).Msg("Cannot join the replacement room yet; an invite there from someone permissions.invite allows will be accepted")
			continue
		}
		if !m.succeeds(ctx, bot, evt.RoomID, newRoom) {
			log.Warn().Stringer("bot", bot).Msg("The replacement room does not name this room as its predecessor; left it again and did not move anything")
			if _, err := actor.LeaveRoom(ctx, newRoom, &mautrix.ReqLeave{Reason: "This room is not the upgrade of the room that pointed here."}); err != nil {
				log.Error().Err(err).Stringer("bot", bot).Msg("Could not leave the false replacement room")
			}
			_ = m.profiles.FinishUpgrade(ctx, newRoom)
			return
		}
		if err := m.FetchState(ctx, bot, newRoom); err != nil {
			log.Warn().Err(err).Stringer("bot", bot).Msg("Joined the replacement room, but could not fetch its state")
		}
		log.Info().Stringer("bot", bot).Msg("Joined the replacement room")
		m.finishUpgrade(ctx, bot, newRoom)
	}
}

// succeeds reports whether newRoom's create event, as bot reads it, names
// oldRoom as its predecessor.
func (m *Manager) succeeds(ctx context.Context, bot id.UserID, oldRoom, newRoom id.RoomID) bool {
	var create event.CreateEventContent
	if err := m.accounts.Actor(bot).StateEvent(ctx, newRoom, event.StateCreate, "", &create); err != nil {
		m.log.Warn().Err(err).Stringer("room_id", newRoom).Msg("Could not read the create event of a replacement room")
		return false
	}
	return create.GetPredecessor().RoomID == oldRoom
}

// finishUpgrade completes a pending upgrade once bot is in newRoom: memory
// moves (once) and the bot leaves the old room if so configured.
func (m *Manager) finishUpgrade(ctx context.Context, bot id.UserID, newRoom id.RoomID) {
	oldRoom, err := m.profiles.UpgradeOf(ctx, newRoom)
	if err != nil || oldRoom == "" {
		return
	}
	log := m.log.With().Stringer("room_id", oldRoom).Stringer("replacement", newRoom).Logger()
	if !m.succeeds(ctx, bot, oldRoom, newRoom) {
		// Invited there by someone permissions.invite allows, but the room
		// is not the old one's upgrade: the bot stays, the memory does not move.
		log.Warn().Stringer("bot", bot).Msg("The room a tombstone pointed to does not name the old room as its predecessor; not moving skill memory")
		_ = m.profiles.FinishUpgrade(ctx, newRoom)
		return
	}
	if m.moveMemory != nil {
		if err := m.moveMemory(ctx, oldRoom, newRoom); err != nil {
			log.Error().Err(err).Msg("Could not move skill memory to the replacement room")
		} else {
			log.Info().Msg("Moved skill memory to the replacement room")
		}
	}
	// Later bots find nothing left to move; keep the record until every bot
	// of the old room has left or followed, which is cheap to leave as is.
	if m.leaveUpgraded {
		if _, err := m.accounts.Actor(bot).LeaveRoom(ctx, oldRoom, &mautrix.ReqLeave{Reason: "This room was upgraded; I moved to the new one."}); err != nil {
			log.Warn().Err(err).Stringer("bot", bot).Msg("Could not leave the upgraded room")
		}
	}
	stillThere := false
	for _, b := range m.ids {
		if b != bot && m.as.StateStore.IsInRoom(ctx, oldRoom, b) && !m.as.StateStore.IsInRoom(ctx, newRoom, b) {
			stillThere = true
		}
	}
	if !stillThere || !m.leaveUpgraded {
		_ = m.profiles.FinishUpgrade(ctx, newRoom)
	}
}

// FetchState loads a room's current state into the state store. After a
// join the homeserver does not push the room's earlier state, and without it
// opsbot would not know that the room is encrypted or who is in it.
func (m *Manager) FetchState(ctx context.Context, bot id.UserID, room id.RoomID) error {
	client := m.accounts.Client(bot)
	var state mautrix.RoomStateMap
	err := outbox.Retry(ctx, m.log, "fetch state", time.Second, 30*time.Second, func() error {
		var err error
		state, err = client.State(ctx, room)
		return err
	})
	if err != nil {
		return err
	}
	members := 0
	for _, byKey := range state {
		for _, evt := range byKey {
			evt.RoomID = room
			mautrix.UpdateStateStore(ctx, m.as.StateStore, evt)
			if evt.Type == event.StateMember {
				members++
			}
		}
	}
	m.log.Debug().Stringer("room_id", room).Int("state_types", len(state)).Int("members", members).Msg("Fetched room state")
	return nil
}

// RoomBots returns our bots joined to a room, in config order.
func (m *Manager) RoomBots(ctx context.Context, room id.RoomID) []id.UserID {
	var out []id.UserID
	for _, b := range m.ids {
		if m.as.StateStore.IsInRoom(ctx, room, b) {
			out = append(out, b)
		}
	}
	return out
}

// leaveIfAlone makes our bots leave a room that has no one but them left.
func (m *Manager) leaveIfAlone(ctx context.Context, room id.RoomID) {
	members, err := m.as.StateStore.GetRoomJoinedOrInvitedMembers(ctx, room)
	if err != nil {
		m.log.Warn().Err(err).Stringer("room_id", room).Msg("Could not list room members")
		return
	}
	var ours []id.UserID
	for _, u := range members {
		if !m.IsBot(u) {
			return
		}
		ours = append(ours, u)
	}
	for _, bot := range ours {
		if _, err := m.accounts.Actor(bot).LeaveRoom(ctx, room); err != nil && !errors.Is(err, mautrix.MForbidden) {
			m.log.Warn().Err(err).Stringer("bot", bot).Stringer("room_id", room).Msg("Could not leave empty room")
			continue
		}
		m.log.Info().Stringer("bot", bot).Stringer("room_id", room).Msg("Left room: everyone else has gone")
	}
}

// Describe returns "@a:x (ping, help), @b:x (echo)" for logs and check output.
func (m *Manager) Describe() string {
	parts := make([]string, len(m.bots))
	for i, b := range m.bots {
		parts[i] = fmt.Sprintf("%s (%s)", m.ids[i], strings.Join(b.Skills, ", "))
		if b.IsClient() {
			parts[i] = fmt.Sprintf("%s [client mode] (%s)", m.ids[i], strings.Join(b.Skills, ", "))
		}
	}
	return strings.Join(parts, ", ")
}
