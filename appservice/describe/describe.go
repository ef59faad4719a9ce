// Package describe publishes each bot's command descriptions into the
// state of its rooms (MSC4391, org.matrix.msc4391.command_description), so
// that clients can offer the commands and send structured invocations.
// The descriptions come from the skills (skills.Engine.Descriptions); what
// was published is remembered in the database, so a start or a reload sends
// only what changed, and empties the descriptions of commands that are gone.
//
// A bot needs the power to send that state event. Where it lacks it, the
// room is skipped: the log says so once per room, !status counts the
// rooms, and a later power-level change in the room tries again.
package describe

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"sync"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/event/cmdschema"
	"maunium.net/go/mautrix/id"
)

// Store remembers what is published (appservice/store implements it).
type Store interface {
	PublishedDescriptions(ctx context.Context, room id.RoomID, bot id.UserID) (map[string]string, error)
	SetPublishedDescription(ctx context.Context, room id.RoomID, bot id.UserID, stateKey, digest string) error
}

// Options configure a Publisher.
type Options struct {
	Store Store
	// Descriptions returns what a bot's skills describe now.
	Descriptions func(bot id.UserID) []*cmdschema.EventContent
	// SendState sends a state event as the bot (the outbox).
	SendState func(ctx context.Context, bot id.UserID, room id.RoomID, t event.Type, stateKey string, content any) (id.EventID, error)
	// JoinedRooms lists the rooms a bot is in.
	JoinedRooms func(ctx context.Context, bot id.UserID) ([]id.RoomID, error)
	Log         zerolog.Logger
}

// Publisher keeps the rooms' command descriptions in step with the skills.
type Publisher struct {
	opts Options

	mu sync.Mutex // one room at a time: a start-up pass and an event may meet
	// forbidden are the rooms where a bot may not send the descriptions.
	forbidden map[id.UserID]map[id.RoomID]bool
}

// New returns a Publisher.
func New(opts Options) *Publisher {
	return &Publisher{opts: opts, forbidden: map[id.UserID]map[id.RoomID]bool{}}
}

// All brings every room of every bot up to date (at start and after a
// reload). It goes on past a room that fails.
func (p *Publisher) All(ctx context.Context, bots []id.UserID) {
	for _, bot := range bots {
		rooms, err := p.opts.JoinedRooms(ctx, bot)
		if err != nil {
			p.opts.Log.Warn().Err(err).Stringer("bot", bot).Msg("Could not list the bot's rooms to publish its command descriptions")
			continue
		}
		for _, room := range rooms {
			p.Room(ctx, room, bot)
		}
	}
}

// Room brings one bot's descriptions in one room up to date (after the bot
// joined, or the room's power levels changed).
func (p *Publisher) Room(ctx context.Context, room id.RoomID, bot id.UserID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	log := p.opts.Log.With().Stringer("bot", bot).Stringer("room_id", room).Logger()
	published, err := p.opts.Store.PublishedDescriptions(ctx, room, bot)
	if err != nil {
		log.Warn().Err(err).Msg("Could not read the published command descriptions")
		return
	}
	want := map[string]*cmdschema.EventContent{}
	for _, d := range p.opts.Descriptions(bot) {
		want[d.StateKey(bot)] = d
	}
	sent, emptied := 0, 0
	for key, d := range want {
		dig := digest(d)
		if published[key] == dig {
			continue
		}
		if !p.send(ctx, log, room, bot, key, d, dig) {
			return
		}
		sent++
	}
	for key := range published {
		if want[key] != nil {
			continue
		}
		// An empty description is how a command is taken back.
		if !p.send(ctx, log, room, bot, key, struct{}{}, "") {
			return
		}
		emptied++
	}
	if p.forbidden[bot][room] {
		delete(p.forbidden[bot], room)
		log.Info().Msg("The bot may publish its command descriptions in this room now")
	}
	if sent+emptied > 0 {
		log.Info().Int("published", sent).Int("removed", emptied).Msg("Updated the bot's command descriptions in the room")
	}
}

// send sends one description and records it; false stops the room.
func (p *Publisher) send(ctx context.Context, log zerolog.Logger, room id.RoomID, bot id.UserID, key string, content any, dig string) bool {
	_, err := p.opts.SendState(ctx, bot, room, event.StateMSC4391BotCommand, key, content)
	if errors.Is(err, mautrix.MForbidden) {
		if !p.forbidden[bot][room] {
			if p.forbidden[bot] == nil {
				p.forbidden[bot] = map[id.RoomID]bool{}
			}
			p.forbidden[bot][room] = true
			log.Warn().Err(err).Msg("The bot may not publish its command descriptions here: it needs the power level to send " +
				event.StateMSC4391BotCommand.Type + " (commands still work; clients just cannot offer them)")
		}
		return false
	}
	if err != nil {
		log.Warn().Err(err).Msg("Could not publish a command description")
		return false
	}
	if err := p.opts.Store.SetPublishedDescription(ctx, room, bot, key, dig); err != nil {
		log.Warn().Err(err).Msg("Could not record a published command description")
		return false
	}
	return true
}

// Forbidden is how many rooms bot may not publish its descriptions in.
func (p *Publisher) Forbidden(bot id.UserID) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.forbidden[bot])
}

func digest(d *cmdschema.EventContent) string {
	data, _ := json.Marshal(d)
	sum := sha256.Sum256(data)
	return base64.RawStdEncoding.EncodeToString(sum[:])
}
