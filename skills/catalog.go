package skills

import (
	"fmt"
	"strings"

	"maunium.net/go/mautrix/event"
)

// EventInfo documents how opsbot handles one event type. The catalog below
// is the source of docs/events.md (a test regenerates the page and fails if
// it differs), so the page cannot drift from what the code does.
type EventInfo struct {
	Type event.Type
	// Arrives says how the event reaches opsbot.
	Arrives string
	// Match says which matcher catches it.
	Match string
	// Send says how a skill sends one (empty: skills do not send it).
	Send string
	// Encrypted says what changes in encrypted rooms.
	Encrypted string
	// Opsbot says what opsbot itself does with it, and what it ignores.
	Opsbot string
	// Raw marks types mautrix has no content struct for: skills read
	// ev.Raw.Content.Raw.
	Raw bool
}

const (
	arrivesRoom      = "room event in a pushed transaction"
	arrivesState     = "state event in a pushed transaction (the room state store is updated first)"
	arrivesEphemeral = "ephemeral event: in the transaction (MSC2409) or, in sync key-delivery mode, from the bots' `/sync`; Dendrite pushes neither, so it needs encryption on in sync mode"
	encryptedMessage = "arrives as `m.room.encrypted` and is decrypted before any matcher sees it; what the bot sends is encrypted"
	notEncrypted     = "never encrypted (Matrix does not encrypt it)"
)

// Events lists every event type opsbot handles or documents ignoring.
var Events = []EventInfo{
	{Type: event.EventMessage, Arrives: arrivesRoom,
		Match:     "`r.Command`, `r.Regex`, `r.Fallback` for `m.text` and `m.emote` (never `m.notice`); `r.Event(event.EventMessage, ...)` for every message, including files, images, audio, video, locations, edits and thread replies; `ev.Message()`, `ev.File()`, `ev.IsEdit()`",
		Send:      "`ev.Reply`, `ev.ReplyHTML`, `ev.Respond`, `ev.ReplyInThread`, `ev.Edit`, `ev.SendFile`, `ev.SendLocation`, `ev.Send`; replies stay in the trigger's thread",
		Encrypted: encryptedMessage + "; files are encrypted with their own key (`ev.Download` decrypts, `ev.SendFile` encrypts)",
		Opsbot:    "an edit (`m.replace`) does not re-run commands unless the matcher has `skills.OnEdits()`; the reply fallback (`> <@user> ...`) is stripped from the body; bots never answer notices, themselves or each other; a structured invocation (MSC4391: `org.matrix.msc4391.command` with the command and its arguments, `m.mentions` naming only this bot) runs the command like its text form, with the same permissions, rate limits and threading; what a bot sends has its `formatted_body` cut to the spec's HTML subset and an explicit `m.mentions` (empty unless the skill set one), see [skills.md](skills.md#acting)"},
	{Type: event.EventEncrypted, Arrives: arrivesRoom,
		Match:     "none: skills get the decrypted event",
		Send:      "automatic: every send into an encrypted room",
		Encrypted: "decrypted with the device of a bot in the room; when its room key is not here yet, the room parks (its later events wait behind it, other rooms go on) until the key arrives, asking the sender's devices for it after 3 s, for up to `encryption.decrypt_wait`",
		Opsbot:    "when the key never comes the bot answers \"I could not decrypt your message\" (`encryption.reply_on_failure`); replayed or forged ciphertext is refused and logged; with encryption off it is ignored and logged once"},
	{Type: event.EventReaction, Arrives: arrivesRoom, Match: "`r.Event(event.EventReaction, ...)`", Send: "`ev.React`",
		Encrypted: "reactions stay unencrypted, as Matrix requires, so relations work", Opsbot: "none"},
	{Type: event.EventRedaction, Arrives: arrivesRoom + " (Dendrite v0.13.8 does not push redactions to appservices, so skills there never see them)", Match: "`r.Event(event.EventRedaction, ...)`", Send: "`ev.Redact`",
		Encrypted: notEncrypted, Opsbot: "none"},
	{Type: event.EventSticker, Arrives: arrivesRoom, Match: "`r.Event(event.EventSticker, ...)`", Send: "`ev.Send(ctx, event.EventSticker, content)`",
		Encrypted: encryptedMessage, Opsbot: "none"},
	{Type: event.EventUnstablePollStart, Arrives: arrivesRoom, Match: "`r.Event(event.EventUnstablePollStart, ...)`", Send: "`ev.SendPoll`",
		Encrypted: encryptedMessage, Opsbot: "the stable `m.poll.*` names are not sent by clients yet; opsbot uses the MSC3381 names that Element sends"},
	{Type: event.EventUnstablePollResponse, Arrives: arrivesRoom, Match: "`r.Event(event.EventUnstablePollResponse, ...)`", Send: "`ev.Send` with the poll's relation",
		Encrypted: encryptedMessage, Opsbot: "none"},
	{Type: event.EventUnstablePollEnd, Arrives: arrivesRoom, Match: "`r.Event(event.EventUnstablePollEnd, ...)`", Send: "`ev.Send` with the poll's relation",
		Encrypted: encryptedMessage, Opsbot: "none", Raw: true},
	{Type: event.StateMember, Arrives: arrivesState, Match: "`r.Event(event.StateMember, ...)`",
		Send: "`ev.ChangeMembership(ctx, user, skills.Invite|Kick|Ban|Unban, reason)`", Encrypted: notEncrypted,
		Opsbot: "invites of a bot are accepted or declined by `permissions.invite`; a bot that is kicked or banned logs it; when the last person leaves, the bots leave; in encrypted rooms a change rotates the bots' room keys"},
	{Type: event.StateRoomName, Arrives: arrivesState, Match: "`r.Event(event.StateRoomName, ...)`", Send: "`ev.SetRoomName`", Encrypted: notEncrypted, Opsbot: "none"},
	{Type: event.StateTopic, Arrives: arrivesState, Match: "`r.Event(event.StateTopic, ...)`", Send: "`ev.SetTopic`", Encrypted: notEncrypted, Opsbot: "none"},
	{Type: event.StateRoomAvatar, Arrives: arrivesState, Match: "`r.Event(event.StateRoomAvatar, ...)`", Send: "`ev.SetRoomAvatar`", Encrypted: notEncrypted, Opsbot: "none"},
	{Type: event.StateTombstone, Arrives: arrivesState, Match: "`r.Event(event.StateTombstone, ...)`", Send: "",
		Encrypted: notEncrypted, Opsbot: "every bot follows the room to its replacement (joining, or accepting an invite there that `permissions.invite` allows) if the replacement's create event names the old room as its predecessor (a tombstone pointing elsewhere is logged, and a bot that joined leaves again); skill memory moves along, and the bots leave the old room unless `rooms.leave_upgraded` is false"},
	{Type: event.StateEncryption, Arrives: arrivesState, Match: "`r.Event(event.StateEncryption, ...)`", Send: "",
		Encrypted: "turns encryption on: from then on every send is encrypted, and with encryption off the bots stay silent", Opsbot: "recorded in the state store"},
	{Type: event.StatePowerLevels, Arrives: arrivesState, Match: "`r.Event(event.StatePowerLevels, ...)`", Send: "`ev.SetState`", Encrypted: notEncrypted, Opsbot: "recorded in the state store; each bot in the room publishes its command descriptions again if it may now"},
	{Type: event.StateMSC4391BotCommand, Arrives: arrivesState, Match: "`r.Event(event.StateMSC4391BotCommand, ...)`", Send: "automatic: opsbot publishes one per command, from the skills' registrations",
		Encrypted: notEncrypted, Opsbot: "each bot describes each of its commands (name, arguments with their types and descriptions, what it does) in every room it is in, when it joins, at start, after a reload and when the room's power levels change; descriptions of commands that are gone are emptied; where the bot may not send this state event, the log says so once and `!status` counts the rooms"},
	{Type: event.StateHistoryVisibility, Arrives: arrivesState, Match: "`r.Event(event.StateHistoryVisibility, ...)`", Send: "`ev.SetState`",
		Encrypted: notEncrypted, Opsbot: "told to the bots' encryption machines, which decide who gets room keys for history"},
	{Type: event.EphemeralEventTyping, Arrives: arrivesEphemeral, Match: "`r.Event(event.EphemeralEventTyping, ...)`", Send: "`ev.SetTyping`", Encrypted: notEncrypted, Opsbot: "none"},
	{Type: event.EphemeralEventReceipt, Arrives: arrivesEphemeral, Match: "`r.Event(event.EphemeralEventReceipt, ...)`", Send: "`ev.MarkRead`", Encrypted: notEncrypted, Opsbot: "none"},
	inRoomVerification(event.InRoomVerificationStart), inRoomVerification(event.InRoomVerificationReady),
	inRoomVerification(event.InRoomVerificationAccept), inRoomVerification(event.InRoomVerificationKey),
	inRoomVerification(event.InRoomVerificationMAC), inRoomVerification(event.InRoomVerificationCancel),
	inRoomVerification(event.InRoomVerificationDone),
	{Type: event.ToDeviceRoomKey, Arrives: "to-device event: in the transaction (MSC2409, appservice mode) or the bot device's `/sync` (sync mode)", Match: "none",
		Send: "", Encrypted: "carries a room key, inside an Olm-encrypted to-device message", Opsbot: "handed to the encryption machine of the device it was sent to; one for a device opsbot does not run is dropped and logged"},
}

// Catalog returns the entry for an event type, if documented.
func Catalog(t string) (EventInfo, bool) {
	for _, e := range Events {
		if e.Type.Type == t {
			return e, true
		}
	}
	return EventInfo{}, false
}

// GoType names the mautrix content type of an event type ("" if none).
func (e EventInfo) GoType() string {
	if t, ok := event.TypeMap[e.Type]; ok {
		return "*event." + t.Name()
	}
	if t, ok := event.TypeMap[event.Type{Type: e.Type.Type, Class: event.ToDeviceEventType}]; ok {
		return "*event." + t.Name()
	}
	return ""
}

// EventsMarkdown renders docs/events.md from the catalog.
func EventsMarkdown() string {
	var b strings.Builder
	b.WriteString(`# How opsbot handles each event type

This page is generated from the catalog in ` + "`skills/catalog.go`" + `, and a test fails
when they differ (regenerate with ` + "`OPSBOT_UPDATE_DOCS=1 go test ./skills -run EventsDoc`" + `).
For every event type: how it arrives, the Go type of its content
(` + "`ev.Raw.Content.Parsed`" + `), which matcher catches it, how a skill sends one, what
changes in encrypted rooms, and what opsbot itself does or ignores.
The [tour skill](../skills/builtin/tour/README.md) does each of these, and the integration
tests use it to check every type in and out, in plain and encrypted rooms.

Event types not listed here still reach ` + "`r.Event`" + ` matchers with their raw
content (` + "`ev.Raw.Content.Raw`" + `); opsbot does nothing else with them.

`)
	for _, e := range Events {
		fmt.Fprintf(&b, "## `%s`\n\n", e.Type.Type)
		fmt.Fprintf(&b, "| | |\n| --- | --- |\n")
		fmt.Fprintf(&b, "| arrives | %s |\n", e.Arrives)
		if gt := e.GoType(); gt != "" {
			fmt.Fprintf(&b, "| content | `%s` |\n", gt)
		} else if e.Raw {
			b.WriteString("| content | raw JSON in `ev.Raw.Content.Raw` |\n")
		}
		fmt.Fprintf(&b, "| matched by | %s |\n", e.Match)
		send := e.Send
		if send == "" {
			send = "skills do not send it"
		}
		fmt.Fprintf(&b, "| sent with | %s |\n", send)
		fmt.Fprintf(&b, "| in encrypted rooms | %s |\n", e.Encrypted)
		fmt.Fprintf(&b, "| opsbot itself | %s |\n\n", e.Opsbot)
	}
	return strings.TrimRight(b.String(), "\n") + "\n"
}

// inRoomVerification documents the events of a verification in a room (a
// DM), which go to the verification helper, not the skills.
func inRoomVerification(t event.Type) EventInfo {
	return EventInfo{Type: t, Arrives: arrivesRoom + ", after an `m.key.verification.request` message", Match: "none: they never reach the skills",
		Encrypted: encryptedMessage, Opsbot: "handed to the verification of the bot the request named (docs/verification.md); those of other people's verifications are ignored"}
}
