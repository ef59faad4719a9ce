// The contract between a skill and the runtime: what a skill provides
// (Skill) and what it may use (Host, Config, Sender, Media, Rooms, Memory).

package skills

import (
	"context"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Skill is what a skill package provides.
type Skill interface {
	// Name is the skill's name in config (bots[].skills, skills.<name>).
	Name() string
	// Setup registers the skill's matchers and reads its config section.
	// An error refuses start-up and is shown to the admin as it is.
	Setup(r *Router, cfg Config) error
}

// Host is what a skill may ask of the opsbot that runs it beyond its rooms:
// who administers it, how it is doing, and a reload of the skill
// configuration. appservice.Service provides it (Router.Host).
type Host interface {
	// Admins are permissions.admins of the configuration being set up.
	Admins() []id.UserID
	// Status is a short report for admins.
	Status(ctx context.Context) string
	// Reload re-reads the skill configuration and says what happened.
	Reload(ctx context.Context) (string, error)
}

// Handler handles one matched event. A returned error is logged and the
// sender gets a short apology; the error text itself is not shown in the room.
type Handler func(ctx context.Context, ev *Event) error

// Sender performs actions in rooms. opsbot's outbox implements it; tests
// may use a fake. txnID makes the send idempotent: the homeserver answers a
// retried send with the event it already created.
type Sender interface {
	Send(ctx context.Context, bot id.UserID, room id.RoomID, evtType event.Type, content any, txnID string) (id.EventID, error)
	Redact(ctx context.Context, bot id.UserID, room id.RoomID, target id.EventID, reason, txnID string) (id.EventID, error)
}

// Media moves files as a bot: download (and decrypt) a message's file, and
// upload (encrypting when the room is encrypted). opsbot's outbox implements it.
type Media interface {
	Download(ctx context.Context, bot id.UserID, content *event.MessageEventContent, maxBytes int64) ([]byte, error)
	Upload(ctx context.Context, bot id.UserID, room id.RoomID, data []byte, mimetype, name string) (id.ContentURIString, *event.EncryptedFileInfo, error)
}

// Rooms does the room actions that are not plain sends: state, typing,
// receipts, membership, and fetching an earlier event (decrypted).
// opsbot's outbox implements it.
type Rooms interface {
	SendState(ctx context.Context, bot id.UserID, room id.RoomID, evtType event.Type, stateKey string, content any) (id.EventID, error)
	Typing(ctx context.Context, bot id.UserID, room id.RoomID, typing bool, timeout time.Duration) error
	MarkRead(ctx context.Context, bot id.UserID, room id.RoomID, eventID id.EventID) error
	Membership(ctx context.Context, bot id.UserID, room id.RoomID, user id.UserID, action Membership, reason string) error
	Fetch(ctx context.Context, bot id.UserID, room id.RoomID, eventID id.EventID) (*event.Event, error)
	// EventSender says who sent an event, without decrypting it.
	EventSender(ctx context.Context, bot id.UserID, room id.RoomID, eventID id.EventID) (id.UserID, error)
}

// Membership actions a bot can take on a user.
type Membership string

// The membership actions.
const (
	Invite Membership = "invite"
	Kick   Membership = "kick"
	Ban    Membership = "ban"
	Unban  Membership = "unban"
)

// Memory is a skill's key/value store for one room. Values are stored as
// JSON. Keys are at most 255 bytes; values at most 64 KiB.
type Memory interface {
	Get(ctx context.Context, key string, v any) (found bool, err error)
	Put(ctx context.Context, key string, v any) error
	Delete(ctx context.Context, key string) error
	Keys(ctx context.Context) ([]string, error)
}

// MemoryStore hands out the Memory of a skill in a room.
type MemoryStore interface {
	Memory(skill string, room id.RoomID) Memory
}
