package policy

// This file applies encryption.command_trust: from which devices a command
// is obeyed, decided on the trust mautrix gave the decrypted event.

import (
	"context"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/skills"
)

// Command trust levels (encryption.command_trust).
const (
	TrustAll         = "all"
	TrustCrossSigned = "cross-signed"
	TrustVerified    = "verified"
)

// Reasons a command is refused: the values of the metric's reason label.
const (
	ReasonNotCrossSigned = "not_cross_signed" // the device is not signed by its owner
	ReasonNotVerified    = "not_verified"     // signed, but the bot has not verified the owner
	ReasonPlainRoom      = "plain_room"       // an unencrypted room: no device to check
)

// RefusalReasons are all reasons, for metrics created at 0.
var RefusalReasons = []string{ReasonNotCrossSigned, ReasonNotVerified, ReasonPlainRoom}

// AnswerEvery is how often one device is told why its commands are refused.
const AnswerEvery = time.Hour

// adminSkill's per-skill command_trust can only make it stricter.
const adminSkill = "admin"

// TrustOptions configure command trust.
type TrustOptions struct {
	// Encryption holds command_trust and command_trust_plain_rooms.
	Encryption config.Encryption
	Log        zerolog.Logger
	// Refused, if set, counts a refusal (opsbot_commands_refused_total).
	Refused func(reason string)
	// Answered remembers whom the bots told, within AnswerEvery, why a
	// command was refused; shared across reloads so that a reload does not
	// repeat the explanation. Nil gives the policy its own.
	Answered *skills.Seen
}

// Level is the command trust a skill requires: its own
// permissions.skills.<skill>.command_trust, else encryption.command_trust;
// for the admin skill the stricter of the two.
func (p *Policy) Level(skill string) string {
	global := TrustAll
	if p.trust != nil && p.trust.Encryption.CommandTrust != "" {
		global = p.trust.Encryption.CommandTrust
	}
	own := p.skills[skill].CommandTrust
	switch {
	case own == "":
		return global
	case skill == adminSkill && rank(global) > rank(own):
		return global
	}
	return own
}

func rank(level string) int {
	switch level {
	case TrustCrossSigned:
		return 1
	case TrustVerified:
		return 2
	}
	return 0
}

// required is the lowest mautrix trust state a level accepts.
func required(level string) id.TrustState {
	if level == TrustVerified {
		// The bot verified the device, or the identity that signed it.
		return id.TrustStateCrossSignedVerified
	}
	// Signed by its owner's self-signing key, the owner's master key the
	// one first seen (a changed one is CrossSignedUntrusted).
	return id.TrustStateCrossSignedTOFU
}

// Trust decides whether evt's sender may command skill from the device
// the event came from (skills.Options.Trust). A refusal is logged and
// counted each time, and answered at most once per device and hour.
func (p *Policy) Trust(_ context.Context, skill string, evt *event.Event) (ok bool, answer string) {
	level := p.Level(skill)
	if p.trust == nil || level == TrustAll {
		return true, ""
	}
	o := p.trust
	var reason string
	state := evt.Mautrix.TrustState
	device := id.DeviceID("")
	if evt.Mautrix.TrustSource != nil {
		device = evt.Mautrix.TrustSource.DeviceID
	}
	switch {
	case !evt.Mautrix.WasEncrypted:
		if o.Encryption.CommandTrustPlainRooms == "obey" {
			return true, ""
		}
		reason = ReasonPlainRoom
	case state >= required(level):
		return true, ""
	case state >= id.TrustStateCrossSignedTOFU:
		reason = ReasonNotVerified
	default:
		reason = ReasonNotCrossSigned
	}
	o.Log.Warn().Str("skill", skill).Str("command_trust", level).Str("reason", reason).
		Stringer("sender", evt.Sender).Str("device_id", device.String()).Stringer("trust_state", state).
		Stringer("room_id", evt.RoomID).Stringer("event_id", evt.ID).
		Msg("Refused a command: " + describe(reason))
	if o.Refused != nil {
		o.Refused(reason)
	}
	key := evt.Sender.String() + "|" + device.String()
	if reason == ReasonPlainRoom {
		key = evt.Sender.String() + "|plain|" + evt.RoomID.String()
	}
	if !o.Answered.Take(key, p.now(), AnswerEvery) {
		return false, ""
	}
	return false, answerFor(reason, device)
}

func describe(reason string) string {
	switch reason {
	case ReasonPlainRoom:
		return "unencrypted room, no device to check"
	case ReasonNotVerified:
		return "the bot has not verified the sender"
	}
	return "the sender's device is not cross-signed by its owner"
}

// answerFor is what the person is told: why, and how to fix it.
func answerFor(reason string, device id.DeviceID) string {
	session := "this session"
	if device != "" {
		session = fmt.Sprintf("this session (%s)", device)
	}
	switch reason {
	case ReasonPlainRoom:
		return "Sorry, I only take this command in encrypted rooms: here I cannot tell which device sent it. " +
			"Please ask me again in an encrypted room, from a verified session."
	case ReasonNotVerified:
		return fmt.Sprintf("Sorry, I only take this command from people who verified me. Please verify me "+
			"(open my profile and choose Verify; my operator compares the emoji on my side), then ask again. "+
			"(I will not repeat this for %s for an hour.)", session)
	}
	return fmt.Sprintf("Sorry, I did not act on this: %s is not verified by its owner, and I only take commands "+
		"from sessions their owner has verified. Please verify this session from another one "+
		"(in Element: Settings, Sessions, Verify session), then ask again. "+
		"(I will not repeat this for %s for an hour.)", session, session)
}
