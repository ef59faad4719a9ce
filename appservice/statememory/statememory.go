// Package statememory keeps a skill's memory for a room in the room itself,
// as state events of type org.opsbot.memory (state key "<skill>:<key>"), the
// idea of opsdroid's database-matrix. The memory travels with the room and
// survives losing opsbot's database. Room state is NOT end-to-end
// encrypted: the homeserver and every member can read it, so secrets must
// never go there.
package statememory

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
)

// EventType is the state event type that holds skill memory.
var EventType = event.Type{Type: "org.opsbot.memory", Class: event.StateEventType}

// MaxValueBytes caps one value: a whole state event must stay under the
// homeserver's 64 KiB event limit.
const MaxValueBytes = 32 << 10

// Store reads and writes memory through the bots.
type Store struct {
	clientOf func(bot id.UserID) *mautrix.Client
	botFor   func(ctx context.Context, room id.RoomID) (id.UserID, bool)
}

// New returns a Store acting through each bot's client (clientOf); botFor
// returns a bot joined to the room that can act there.
func New(clientOf func(bot id.UserID) *mautrix.Client, botFor func(ctx context.Context, room id.RoomID) (id.UserID, bool)) *Store {
	return &Store{clientOf: clientOf, botFor: botFor}
}

// ErrNoBot means no bot is in the room to read or write its state.
var ErrNoBot = errors.New("no bot is in this room to reach its state")

// content is the body of a memory state event; an empty value means deleted
// (state events cannot be removed, only replaced).
type content struct {
	Value json.RawMessage `json:"value,omitempty"`
}

// Memory returns a skill's memory in a room.
func (s *Store) Memory(skill string, room id.RoomID) skills.Memory {
	return &roomMemory{s: s, skill: skill, room: room}
}

type roomMemory struct {
	s     *Store
	skill string
	room  id.RoomID
}

func (m *roomMemory) client(ctx context.Context) (*mautrix.Client, error) {
	bot, ok := m.s.botFor(ctx, m.room)
	if !ok {
		return nil, ErrNoBot
	}
	return m.s.clientOf(bot), nil
}

// keyRe keeps state keys to characters every homeserver routes the same
// way in a URL path (a "/" in a state key is not safe everywhere).
var keyRe = regexp.MustCompile(`^[A-Za-z0-9._~=-]{1,200}$`)

func (m *roomMemory) stateKey(key string) (string, error) {
	if !keyRe.MatchString(key) {
		return "", fmt.Errorf("room-state memory key %q must be 1 to 200 letters, digits or ._~=-", key)
	}
	return m.skill + ":" + key, nil
}

func (m *roomMemory) Get(ctx context.Context, key string, v any) (bool, error) {
	sk, err := m.stateKey(key)
	if err != nil {
		return false, err
	}
	cli, err := m.client(ctx)
	if err != nil {
		return false, err
	}
	var c content
	if err := cli.StateEvent(ctx, m.room, EventType, sk, &c); err != nil {
		if errors.Is(err, mautrix.MNotFound) {
			return false, nil
		}
		return false, fmt.Errorf("reading room memory %q: %w", key, err)
	}
	if len(c.Value) == 0 {
		return false, nil
	}
	if err := json.Unmarshal(c.Value, v); err != nil {
		return true, fmt.Errorf("decoding room memory %q: %w", key, err)
	}
	return true, nil
}

func (m *roomMemory) Put(ctx context.Context, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding room memory %q: %w", key, err)
	}
	if len(data) > MaxValueBytes {
		return fmt.Errorf("room memory value for %q is %d bytes, more than the %d a state event can hold", key, len(data), MaxValueBytes)
	}
	return m.write(ctx, key, content{Value: data})
}

func (m *roomMemory) Delete(ctx context.Context, key string) error {
	return m.write(ctx, key, content{})
}

func (m *roomMemory) write(ctx context.Context, key string, c content) error {
	sk, err := m.stateKey(key)
	if err != nil {
		return err
	}
	cli, err := m.client(ctx)
	if err != nil {
		return err
	}
	if _, err := cli.SendStateEvent(ctx, m.room, EventType, sk, c); err != nil {
		if errors.Is(err, mautrix.MForbidden) {
			return fmt.Errorf("writing room memory %q: the bot may not send %s state events here; give it a power level of at least the room's state_default: %w", key, EventType.Type, err)
		}
		return fmt.Errorf("writing room memory %q: %w", key, err)
	}
	return nil
}

func (m *roomMemory) Keys(ctx context.Context) ([]string, error) {
	all, err := m.s.entries(ctx, m.room)
	if err != nil {
		return nil, err
	}
	var keys []string
	for sk := range all {
		if k, ok := strings.CutPrefix(sk, m.skill+":"); ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys, nil
}

// entries returns every non-deleted memory entry of a room by state key.
func (s *Store) entries(ctx context.Context, room id.RoomID) (map[string]json.RawMessage, error) {
	bot, ok := s.botFor(ctx, room)
	if !ok {
		return nil, ErrNoBot
	}
	state, err := s.clientOf(bot).State(ctx, room)
	if err != nil {
		return nil, fmt.Errorf("reading room state: %w", err)
	}
	out := map[string]json.RawMessage{}
	for sk, evt := range state[EventType] {
		var c content
		if err := json.Unmarshal(evt.Content.VeryRaw, &c); err == nil && len(c.Value) > 0 {
			out[sk] = c.Value
		}
	}
	return out, nil
}

// Move copies every memory entry of oldRoom into newRoom (an upgrade does
// not carry custom state over), as the bot that is in the new room.
func (s *Store) Move(ctx context.Context, oldRoom, newRoom id.RoomID) (int, error) {
	all, err := s.entries(ctx, oldRoom)
	if err != nil {
		return 0, err
	}
	bot, ok := s.botFor(ctx, newRoom)
	if !ok {
		return 0, ErrNoBot
	}
	cli := s.clientOf(bot)
	n := 0
	for sk, value := range all {
		if _, err := cli.SendStateEvent(ctx, newRoom, EventType, sk, content{Value: value}); err != nil {
			return n, fmt.Errorf("copying room memory %s: %w", sk, err)
		}
		n++
	}
	return n, nil
}
