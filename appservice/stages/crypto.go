package stages

import (
	"context"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/e2ee"
	"github.com/opsbot/opsbot/appservice/pipeline"
	"github.com/opsbot/opsbot/skills"
)

// Encryption is what the crypto stage needs of the bots' devices
// (appservice/e2ee).
type Encryption interface {
	HandleState(ctx context.Context, evt *event.Event, roomBots []id.UserID)
	TryDecrypt(ctx context.Context, evt *event.Event, roomBots []id.UserID) (*event.Event, string, error)
	WaitForKey(ctx context.Context, evt *event.Event, roomBots []id.UserID, until time.Time) <-chan struct{}
	RequestKey(ctx context.Context, evt *event.Event, roomBots []id.UserID)
}

// Crypto keeps the bots' encryption in step with the room and decrypts.
//
// Membership and history visibility changes go to the bots' machines, so
// that a departed member never gets the next room key. An encrypted event
// is decrypted with the device of any bot in the room. When its room key
// is not here yet, the room parks: its later events wait behind it, every
// other room goes on, and it resumes the moment the key arrives (or after
// RequestKeyAfter, to ask the sender's devices for it). After DecryptWait
// the event is given up: the person is told, and the room goes on.
type Crypto struct {
	opts    CryptoOptions
	warnOff sync.Once
}

// CryptoOptions configure the crypto stage.
type CryptoOptions struct {
	// E2EE is nil when encryption is off.
	E2EE Encryption
	// IsBot tells our bots apart: their own encrypted messages need no
	// decrypting.
	IsBot func(id.UserID) bool
	// DecryptWait bounds the wait for a room key (encryption.decrypt_wait).
	DecryptWait time.Duration
	// ReplyOnFailure tells the sender when a message could not be read.
	ReplyOnFailure bool
	// Engine is the skills engine, for the notices to the sender.
	Engine func() *skills.Engine
	// Observe, if set, is told each decryption's outcome (ok, late_key,
	// no_session, no_key_delivery, error) with the room's first bot.
	Observe func(bot id.UserID, outcome string)
	Log     zerolog.Logger
}

// NewCrypto returns the crypto stage.
func NewCrypto(opts CryptoOptions) *Crypto { return &Crypto{opts: opts} }

// keyWait is what the crypto stage keeps in a parked item.
type keyWait struct {
	requested bool
}

func (*Crypto) Name() string { return "crypto" }

func (*Crypto) Handles() []event.Type {
	return []event.Type{event.EventEncrypted, event.StateMember, event.StateHistoryVisibility}
}

func (c *Crypto) Run(ctx context.Context, ev *Event) Result {
	switch ev.Evt.Type {
	case event.StateMember, event.StateHistoryVisibility:
		if c.opts.E2EE != nil {
			c.opts.E2EE.HandleState(ctx, ev.Evt, ev.RoomBots)
		}
		return Next
	case event.EventEncrypted:
		if c.opts.IsBot(ev.Evt.Sender) {
			return Stop // our own messages: nothing to decrypt or answer
		}
		return c.decrypt(ctx, ev)
	}
	return Next
}

func (c *Crypto) decrypt(ctx context.Context, ev *Event) Result {
	log := zerolog.Ctx(ctx)
	if c.opts.E2EE == nil {
		c.warnOff.Do(func() {
			log.Warn().Stringer("room_id", ev.Evt.RoomID).Msg("Received an encrypted event, but encryption.enabled is false: bots will not answer in encrypted rooms")
		})
		return Stop
	}
	decrypted, reason, err := c.opts.E2EE.TryDecrypt(ctx, ev.Evt, ev.RoomBots)
	wait, waited := ev.State.(*keyWait)
	if reason == "ok" {
		if waited {
			reason = "late_key"
			log.Debug().Dur("waited", time.Since(ev.Since)).Msg("Decrypted after waiting for the room key")
		}
		c.observe(ev, reason)
		ev.Evt = decrypted
		return Next
	}
	if reason == "no_session" {
		deadline := ev.Since.Add(c.opts.DecryptWait)
		if now := time.Now(); now.Before(deadline) {
			if !waited {
				wait = &keyWait{}
				ev.State = wait
				content, _ := ev.Evt.Content.Parsed.(*event.EncryptedEventContent)
				log.Info().Stringer("sender", ev.Evt.Sender).Stringer("session_id", sessionOf(content)).Dur("up_to", c.opts.DecryptWait).
					Msg("Room waits for the room key of this message; other rooms go on")
			}
			until := deadline
			if !wait.requested {
				if ask := ev.Since.Add(e2ee.RequestKeyAfter); now.Before(ask) {
					if ask.Before(deadline) {
						until = ask
					}
				} else {
					c.opts.E2EE.RequestKey(ctx, ev.Evt, ev.RoomBots)
					wait.requested = true
					log.Info().Stringer("sender", ev.Evt.Sender).Msg("Room key still missing; asked the sender's devices for it")
				}
			}
			return Result{Park: &pipeline.Park{
				Wake:   c.opts.E2EE.WaitForKey(ctx, ev.Evt, ev.RoomBots, until),
				Until:  until,
				Reason: "waits for the room key of a message from " + ev.Evt.Sender.String(),
			}}
		}
	}
	c.observe(ev, reason)
	log.Warn().Err(err).Str("reason", reason).Stringer("sender", ev.Evt.Sender).Msg("Could not decrypt event")
	if c.opts.ReplyOnFailure {
		switch reason {
		case "no_session":
			notify(c.opts.Engine, ctx, ev.RoomBots[0], ev.Evt, "I could not decrypt your message (its key never reached me). Please send it again.")
		case "no_key_delivery":
			notify(c.opts.Engine, ctx, ev.RoomBots[0], ev.Evt, "I cannot read encrypted messages on this homeserver yet: it does not deliver my encryption keys. "+
				"Its admin can fix that (opsbot-appservice check says how).")
		}
	}
	return Stop
}

func (c *Crypto) observe(ev *Event, outcome string) {
	if c.opts.Observe != nil && len(ev.RoomBots) > 0 {
		c.opts.Observe(ev.RoomBots[0], outcome)
	}
}

func sessionOf(content *event.EncryptedEventContent) id.SessionID {
	if content == nil {
		return ""
	}
	return content.SessionID
}
