// Package accounts gives every bot the client it acts through. A bot in the
// appservice's namespace acts through the appservice's intent (the as_token,
// masquerading as the bot). A client-mode bot is an ordinary account: it
// logs in once, with its password or a given access token, and keeps that
// login and its device across restarts (login.go).
//
// Everything that acts as a bot (the outbox, the bot manager, room-state
// memory) asks Actor or Client here, so the two kinds of bot differ in this
// package and in how their events arrive, nowhere else.
package accounts

import (
	"context"
	"net/http"
	"slices"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	mas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/store"
)

// Actor is what a bot does in rooms and to its profile. *mautrix.Client
// (a client-mode bot) has these methods as they are; an appservice bot's
// intent is adapted (intentActor), so that it keeps joining a room before
// acting in it as the appservice API expects.
type Actor interface {
	SendMessageEvent(ctx context.Context, roomID id.RoomID, eventType event.Type, contentJSON any, extra ...mautrix.ReqSendEvent) (*mautrix.RespSendEvent, error)
	SendStateEvent(ctx context.Context, roomID id.RoomID, eventType event.Type, stateKey string, contentJSON any, extra ...mautrix.ReqSendEvent) (*mautrix.RespSendEvent, error)
	StateEvent(ctx context.Context, roomID id.RoomID, eventType event.Type, stateKey string, outContent any) error
	RedactEvent(ctx context.Context, roomID id.RoomID, eventID id.EventID, extra ...mautrix.ReqRedact) (*mautrix.RespSendEvent, error)
	UserTyping(ctx context.Context, roomID id.RoomID, typing bool, timeout time.Duration) (*mautrix.RespTyping, error)
	MarkRead(ctx context.Context, roomID id.RoomID, eventID id.EventID) error
	JoinRoomByID(ctx context.Context, roomID id.RoomID) (*mautrix.RespJoinRoom, error)
	JoinRoom(ctx context.Context, roomIDorAlias string, req *mautrix.ReqJoinRoom) (*mautrix.RespJoinRoom, error)
	LeaveRoom(ctx context.Context, roomID id.RoomID, req ...*mautrix.ReqLeave) (*mautrix.RespLeaveRoom, error)
	InviteUser(ctx context.Context, roomID id.RoomID, req *mautrix.ReqInviteUser) (*mautrix.RespInviteUser, error)
	KickUser(ctx context.Context, roomID id.RoomID, req *mautrix.ReqKickUser) (*mautrix.RespKickUser, error)
	BanUser(ctx context.Context, roomID id.RoomID, req *mautrix.ReqBanUser) (*mautrix.RespBanUser, error)
	UnbanUser(ctx context.Context, roomID id.RoomID, req *mautrix.ReqUnbanUser) (*mautrix.RespUnbanUser, error)
	SetDisplayName(ctx context.Context, displayName string) error
	SetAvatarURL(ctx context.Context, url id.ContentURI) error
}

var (
	_ Actor = (*mautrix.Client)(nil)
	_ Actor = intentActor{}
)

// intentActor is an appservice bot's intent with the client's signatures.
type intentActor struct{ *mas.IntentAPI }

func (i intentActor) JoinRoomByID(ctx context.Context, roomID id.RoomID) (*mautrix.RespJoinRoom, error) {
	return i.IntentAPI.JoinRoomByID(ctx, roomID)
}

func (i intentActor) LeaveRoom(ctx context.Context, roomID id.RoomID, req ...*mautrix.ReqLeave) (*mautrix.RespLeaveRoom, error) {
	if len(req) > 0 && req[0] != nil {
		return i.IntentAPI.LeaveRoom(ctx, roomID, req[0])
	}
	return i.IntentAPI.LeaveRoom(ctx, roomID)
}

func (i intentActor) InviteUser(ctx context.Context, roomID id.RoomID, req *mautrix.ReqInviteUser) (*mautrix.RespInviteUser, error) {
	return i.IntentAPI.InviteUser(ctx, roomID, req)
}

func (i intentActor) KickUser(ctx context.Context, roomID id.RoomID, req *mautrix.ReqKickUser) (*mautrix.RespKickUser, error) {
	return i.IntentAPI.KickUser(ctx, roomID, req)
}

func (i intentActor) BanUser(ctx context.Context, roomID id.RoomID, req *mautrix.ReqBanUser) (*mautrix.RespBanUser, error) {
	return i.IntentAPI.BanUser(ctx, roomID, req)
}

func (i intentActor) UnbanUser(ctx context.Context, roomID id.RoomID, req *mautrix.ReqUnbanUser) (*mautrix.RespUnbanUser, error) {
	return i.IntentAPI.UnbanUser(ctx, roomID, req)
}

// SessionStore keeps the client-mode bots' logins (appservice/store).
type SessionStore interface {
	ClientSession(ctx context.Context, bot id.UserID) (*store.ClientSession, error)
	SaveLogin(ctx context.Context, bot id.UserID, device id.DeviceID, token string) error
}

// Options configure Accounts.
type Options struct {
	// AS acts for the appservice bots; its state store is shared with
	// the client-mode bots' clients.
	AS     *mas.AppService
	Bots   []config.Bot
	Domain string
	// HomeserverURL is the client-server API of the client-mode bots.
	HomeserverURL string
	Sessions      SessionStore
	// PickleKey, if set, encrypts the stored access tokens (token.go).
	PickleKey []byte
	// Transport, if set, is the client-mode bots' HTTP transport.
	Transport http.RoundTripper
	Log       zerolog.Logger
}

// Accounts holds every bot's way of acting.
type Accounts struct {
	opts    Options
	clients map[id.UserID]*clientBot
	order   []id.UserID // client-mode bots, in config order
}

// clientBot is a client-mode bot: its config and its own client, whose
// access token and device Login fills in.
type clientBot struct {
	cfg    config.Bot
	index  int // in the config's bot list, for messages that name the key
	client *mautrix.Client
}

// New prepares the bots' clients without touching the network; Login logs
// the client-mode bots in.
func New(opts Options) (*Accounts, error) {
	a := &Accounts{opts: opts, clients: map[id.UserID]*clientBot{}}
	for i, b := range opts.Bots {
		if !b.IsClient() {
			continue
		}
		bot := id.NewUserID(b.Localpart, opts.Domain)
		client, err := mautrix.NewClient(opts.HomeserverURL, bot, "")
		if err != nil {
			return nil, err
		}
		client.Log = opts.Log.With().Stringer("bot", bot).Logger()
		// The outbox and the start-up waits retry with their own policies.
		client.DefaultHTTPRetries = 0
		client.Client.Timeout = 60 * time.Second
		if opts.Transport != nil {
			client.Client.Transport = opts.Transport
		}
		if opts.AS != nil {
			client.StateStore = opts.AS.StateStore
		}
		a.clients[bot] = &clientBot{cfg: b, index: i, client: client}
		a.order = append(a.order, bot)
	}
	return a, nil
}

// ForAppService is Accounts for appservice bots only (tests, tools).
func ForAppService(as *mas.AppService) *Accounts {
	return &Accounts{opts: Options{AS: as}, clients: map[id.UserID]*clientBot{}}
}

// IsClient reports whether bot is a client-mode bot.
func (a *Accounts) IsClient(bot id.UserID) bool { return a.clients[bot] != nil }

// ClientBots lists the client-mode bots in config order.
func (a *Accounts) ClientBots() []id.UserID { return slices.Clone(a.order) }

// Clients are the client-mode bots' clients by bot, for their encryption
// devices (the device of each is its login's, filled in by Login).
func (a *Accounts) Clients() map[id.UserID]*mautrix.Client {
	out := make(map[id.UserID]*mautrix.Client, len(a.clients))
	for bot, cb := range a.clients {
		out[bot] = cb.client
	}
	return out
}

// Actor returns what bot acts through.
func (a *Accounts) Actor(bot id.UserID) Actor {
	if cb := a.clients[bot]; cb != nil {
		return cb.client
	}
	return intentActor{a.opts.AS.Intent(bot)}
}

// Client returns the client that reads and uploads as bot: the client-mode
// bot's own, or the appservice's client masquerading as the bot.
func (a *Accounts) Client(bot id.UserID) *mautrix.Client {
	if cb := a.clients[bot]; cb != nil {
		return cb.client
	}
	return a.opts.AS.Intent(bot).Client
}

// Password returns a client-mode bot's password ("" if it has none) and
// whether bot is one: it answers the homeserver's password prompts.
func (a *Accounts) Password(bot id.UserID) (password string, client bool) {
	if cb := a.clients[bot]; cb != nil {
		return cb.cfg.Account.Password, true
	}
	return "", false
}
