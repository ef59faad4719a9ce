// Package describe publishes each bot's command descriptions into the
// state of its rooms (MSC4391, org.matrix.msc4391.command_description), so
// that clients can offer the commands and send structured invocations.
// The descriptions come from the skills (skills.Engine.Descriptions); what
// was published is remembered in the database, so a start or a reload sends
// only what changed, and empties the descriptions of commands that are gone.
//
// A bot needs the power to send that state event. Where the room's power
// levels say it lacks it, the room is skipped without a request: the log
// says so once per room, !status counts the rooms, and a later power-level
// change in the room tries again.
//
// The work runs on one goroutine of its own (Run), fed by Request: a room's
// events never wait for descriptions, whose sends may be retried for a long
// time while the homeserver is away.
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
	// MayPublish says whether the room's power levels let the bot send the
	// descriptions (nil: try, and learn from a refusal).
	MayPublish func(ctx context.Context, room id.RoomID, bot id.UserID) bool
	Log        zerolog.Logger
}

// job is one bot's descriptions in one room, to bring up to date.
type job struct {
	room id.RoomID
	bot  id.UserID
}

// Publisher keeps the rooms' command descriptions in step with the skills.
type Publisher struct {
	opts Options

	mu sync.Mutex
	// forbidden are the rooms where a bot may not send the descriptions.
	forbidden map[id.UserID]map[id.RoomID]bool
	// pending are the jobs Run has yet to do, each once, in order; all asks
	// for every room of the bots.
	pending []job
	queued  map[job]bool
	all     []id.UserID
	wake    chan struct{}
}

// New returns a Publisher; Run does its work.
func New(opts Options) *Publisher {
	return &Publisher{opts: opts, forbidden: map[id.UserID]map[id.RoomID]bool{},
		queued: map[job]bool{}, wake: make(chan struct{}, 1)}
}

// Request asks for one bot's descriptions in one room to be brought up to
// date (after the bot joined, or the room's power levels changed). It does
// not wait.
func (p *Publisher) Request(room id.RoomID, bot id.UserID) {
	p.mu.Lock()
	j := job{room, bot}
	if !p.queued[j] {
		p.queued[j] = true
		p.pending = append(p.pending, j)
	}
	p.mu.Unlock()
	p.poke()
}

// RequestAll asks for every room of these bots (at start, after a reload).
func (p *Publisher) RequestAll(bots []id.UserID) {
	p.mu.Lock()
	p.all = bots
	p.mu.Unlock()
	p.poke()
}

func (p *Publisher) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Run does the requested work until ctx ends (on the leader).
func (p *Publisher) Run(ctx context.Context) {
	for {
		p.mu.Lock()
		all := p.all
		p.all = nil
		var next *job
		if len(p.pending) > 0 {
			j := p.pending[0]
			p.pending = p.pending[1:]
			delete(p.queued, j)
			next = &j
		}
		p.mu.Unlock()
		switch {
		case all != nil:
			p.listRooms(ctx, all)
		case next != nil:
			p.room(ctx, next.room, next.bot)
		default:
			select {
			case <-ctx.Done():
				return
			case <-p.wake:
			}
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// listRooms queues every room of every bot. It goes on past a bot whose
// rooms cannot be listed.
func (p *Publisher) listRooms(ctx context.Context, bots []id.UserID) {
	for _, bot := range bots {
		rooms, err := p.opts.JoinedRooms(ctx, bot)
		if err != nil {
			p.opts.Log.Warn().Err(err).Stringer("bot", bot).Msg("Could not list the bot's rooms to publish its command descriptions")
			continue
		}
		for _, room := range rooms {
			p.Request(room, bot)
		}
	}
}

// room brings one bot's descriptions in one room up to date.
func (p *Publisher) room(ctx context.Context, room id.RoomID, bot id.UserID) {
	log := p.opts.Log.With().Stringer("bot", bot).Stringer("room_id", room).Logger()
	if p.opts.MayPublish != nil && !p.opts.MayPublish(ctx, room, bot) {
		p.refused(log, room, bot, nil)
		return
	}
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
	p.mu.Lock()
	if p.forbidden[bot][room] {
		delete(p.forbidden[bot], room)
		log.Info().Msg("The bot may publish its command descriptions in this room now")
	}
	p.mu.Unlock()
	if sent+emptied > 0 {
		log.Info().Int("published", sent).Int("removed", emptied).Msg("Updated the bot's command descriptions in the room")
	}
}

// send sends one description and records it; false stops the room.
func (p *Publisher) send(ctx context.Context, log zerolog.Logger, room id.RoomID, bot id.UserID, key string, content any, dig string) bool {
	_, err := p.opts.SendState(ctx, bot, room, event.StateMSC4391BotCommand, key, content)
	if errors.Is(err, mautrix.MForbidden) {
		p.refused(log, room, bot, err)
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

// refused notes a room where the bot may not publish, saying so once.
func (p *Publisher) refused(log zerolog.Logger, room id.RoomID, bot id.UserID, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.forbidden[bot][room] {
		return
	}
	if p.forbidden[bot] == nil {
		p.forbidden[bot] = map[id.RoomID]bool{}
	}
	p.forbidden[bot][room] = true
	log.Warn().AnErr("error", err).Msg("The bot may not publish its command descriptions here: it needs the power level to send " +
		event.StateMSC4391BotCommand.Type + " (commands still work; clients just cannot offer them)")
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
