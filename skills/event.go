package skills

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Event is what a handler receives: the Matrix event plus what the matcher
// found, and the actions the handler may take in reply.
type Event struct {
	// Raw is the Matrix event as received (decrypted, if it was encrypted).
	Raw *event.Event
	// Bot is the bot user this event is being handled as.
	Bot    id.UserID
	RoomID id.RoomID
	Sender id.UserID
	ID     id.EventID
	// Body is the plain-text body of a message, reply fallback removed.
	Body string
	// Command is the command word, for command matches ("remind").
	Command string
	// Args holds command placeholders and named regex groups.
	Args map[string]string
	// Match holds regex submatches (Match[0] is the whole match).
	Match []string
	// Values holds the typed fields of a Parse match (int, float64, string).
	Values map[string]any
	// Skill is the name of the skill handling the event.
	Skill string
	// Memory is the skill's memory for this room.
	Memory Memory

	engine  *Engine
	sender  Sender
	media   Media
	rooms   Rooms
	actions int // counts actions, so each gets its own transaction ID
}

// newEvent is the Event of a handler triggered by a room event.
func (e *Engine) newEvent(evt *event.Event, b *BotSpec, rt *route, body string) *Event {
	ev := &Event{
		Raw: evt, Bot: b.ID, RoomID: evt.RoomID, Sender: evt.Sender, ID: evt.ID,
		Body: body, Skill: rt.skill, engine: e, sender: e.opts.Sender, media: e.opts.Media, rooms: e.opts.Rooms,
	}
	if e.opts.Memory != nil {
		ev.Memory = e.opts.Memory.Memory(rt.skill, evt.RoomID)
	}
	return ev
}

// syntheticEvent is the Event of a handler not triggered by a room event
// (cron, webhook): its ID seeds the transaction IDs of its actions.
func (e *Engine) syntheticEvent(b *BotSpec, rt *route, room id.RoomID, trigger string) *Event {
	ev := &Event{Bot: b.ID, RoomID: room, ID: id.EventID(trigger), Skill: rt.skill, engine: e,
		sender: e.opts.Sender, media: e.opts.Media, rooms: e.opts.Rooms}
	if e.opts.Memory != nil {
		ev.Memory = e.opts.Memory.Memory(rt.skill, room)
	}
	return ev
}

// Arg returns a command placeholder or named regex group ("" if absent).
func (ev *Event) Arg(name string) string { return ev.Args[name] }

// SkillMemory is the skill's memory outside any room, shared by all rooms
// (the same store as ev.Memory of a cron job without rooms, or of a
// webhook). It is nil if opsbot runs without a memory store.
func (ev *Event) SkillMemory() Memory {
	if ev.engine == nil || ev.engine.opts.Memory == nil {
		return nil
	}
	return ev.engine.opts.Memory.Memory(ev.Skill, "")
}

// Commands returns the help of every command this bot runs, for the help skill.
func (ev *Event) Commands() []CommandHelp { return ev.engine.CommandsFor(ev.Bot) }

// nextTxnID derives the transaction ID of the handler's next action from
// the triggering event, the bot and the skill. A handler that runs again
// after a crash sends with the same IDs, so the homeserver de-duplicates it.
func (ev *Event) nextTxnID() string {
	ev.actions++
	return TxnID(string(ev.Bot), string(ev.ID), ev.Skill, ev.actions)
}

// TxnID derives a stable transaction ID for the n-th action of a skill
// triggered by the event (or other trigger key) as the bot.
func TxnID(bot, trigger, skill string, n int) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s\x00%s\x00%s\x00%d", bot, trigger, skill, n)))
	return "opsbot." + base64.RawURLEncoding.EncodeToString(sum[:18])
}

// relatesInThread returns the thread relation to reuse, if the trigger was
// in a thread, so replies stay in it.
func (ev *Event) threadRoot() id.EventID {
	if ev.Raw == nil {
		return ""
	}
	if msg, ok := ev.Raw.Content.Parsed.(*event.MessageEventContent); ok && msg.RelatesTo != nil && msg.RelatesTo.Type == event.RelThread {
		return msg.RelatesTo.EventID
	}
	return ""
}

func (ev *Event) send(ctx context.Context, t event.Type, content any) (id.EventID, error) {
	return ev.sendIn(ctx, ev.RoomID, t, content)
}

func (ev *Event) sendIn(ctx context.Context, room id.RoomID, t event.Type, content any) (id.EventID, error) {
	if room == "" {
		return "", errors.New("no room to send to: this handler runs outside a room; use SendTo")
	}
	if err := ev.checkMentions(t, content); err != nil {
		return "", err
	}
	sent, err := ev.sender.Send(ctx, ev.Bot, room, t, content, ev.nextTxnID())
	if err == nil && ev.engine != nil {
		ev.engine.own.add(ev.Bot, sent)
	}
	return sent, err
}

// SendTo sends a notice into any room the bot is in (for cron jobs and
// webhooks, which have no room of their own).
func (ev *Event) SendTo(ctx context.Context, room id.RoomID, text string) (id.EventID, error) {
	return ev.SendHTMLTo(ctx, room, text, "")
}

// SendHTMLTo sends a formatted notice into a room.
func (ev *Event) SendHTMLTo(ctx context.Context, room id.RoomID, plain, html string) (id.EventID, error) {
	c := &event.MessageEventContent{MsgType: event.MsgNotice, Body: plain}
	if html != "" {
		c.Format, c.FormattedBody = event.FormatHTML, html
	}
	return ev.sendIn(ctx, room, event.EventMessage, c)
}

// EditIn replaces the text of a message the bot sent in a room.
func (ev *Event) EditIn(ctx context.Context, room id.RoomID, target id.EventID, plain, html string) (id.EventID, error) {
	if err := ev.checkTarget(ctx, room, target, false); err != nil {
		return "", err
	}
	c := &event.MessageEventContent{MsgType: event.MsgNotice, Body: plain}
	if html != "" {
		c.Format, c.FormattedBody = event.FormatHTML, html
	}
	c.SetEdit(target)
	c.Body = "* " + plain
	if html != "" {
		c.FormattedBody = "* " + html
	}
	return ev.sendIn(ctx, room, event.EventMessage, c)
}

// SendThreadTo answers in a thread of a room, under root.
func (ev *Event) SendThreadTo(ctx context.Context, room id.RoomID, root id.EventID, plain, html string) (id.EventID, error) {
	c := &event.MessageEventContent{MsgType: event.MsgNotice, Body: plain}
	if html != "" {
		c.Format, c.FormattedBody = event.FormatHTML, html
	}
	c.RelatesTo = (&event.RelatesTo{}).SetThread(root, root)
	return ev.sendIn(ctx, room, event.EventMessage, c)
}

func (ev *Event) message(msgtype event.MessageType, text, html string) *event.MessageEventContent {
	c := &event.MessageEventContent{MsgType: msgtype, Body: text}
	if html != "" {
		c.Format = event.FormatHTML
		c.FormattedBody = html
	}
	if root := ev.threadRoot(); root != "" {
		c.RelatesTo = (&event.RelatesTo{}).SetThread(root, ev.ID)
	}
	return c
}

// Respond sends a notice into the room (into the thread, if the trigger was
// in one). Bots send notices so that other bots do not answer them.
func (ev *Event) Respond(ctx context.Context, text string) (id.EventID, error) {
	return ev.send(ctx, event.EventMessage, ev.message(event.MsgNotice, text, ""))
}

// Reply sends a notice that replies to the triggering event.
func (ev *Event) Reply(ctx context.Context, text string) (id.EventID, error) {
	return ev.ReplyHTML(ctx, text, "")
}

// ReplyHTML sends a formatted reply; plain is what clients without HTML show.
func (ev *Event) ReplyHTML(ctx context.Context, plain, html string) (id.EventID, error) {
	c := ev.message(event.MsgNotice, plain, html)
	if c.RelatesTo == nil {
		c.RelatesTo = &event.RelatesTo{}
		c.RelatesTo.SetReplyTo(ev.ID)
	}
	return ev.send(ctx, event.EventMessage, c)
}

// React puts a reaction (an emoji or short text) on the triggering event.
func (ev *Event) React(ctx context.Context, key string) (id.EventID, error) {
	return ev.send(ctx, event.EventReaction, &event.ReactionEventContent{
		RelatesTo: event.RelatesTo{Type: event.RelAnnotation, EventID: ev.ID, Key: key},
	})
}

// Edit replaces the text of a message the bot sent earlier.
func (ev *Event) Edit(ctx context.Context, target id.EventID, text string) (id.EventID, error) {
	if err := ev.checkTarget(ctx, ev.RoomID, target, false); err != nil {
		return "", err
	}
	c := &event.MessageEventContent{MsgType: event.MsgNotice, Body: text}
	c.SetEdit(target)    // moves the text into m.new_content
	c.Body = "* " + text // what clients without edits show
	return ev.send(ctx, event.EventMessage, c)
}

// Redact removes an event: one the bot sent or, when the skill has
// Privileges.RedactOthers (and the bot the power), anyone's.
func (ev *Event) Redact(ctx context.Context, target id.EventID, reason string) (id.EventID, error) {
	if err := ev.checkTarget(ctx, ev.RoomID, target, true); err != nil {
		return "", err
	}
	if ev.privileges().RedactOthers {
		ev.engine.opts.Log.Info().Str("skill", ev.Skill).Stringer("room_id", ev.RoomID).Stringer("event_id", target).
			Msg("A skill with redact_others redacts an event")
	}
	return ev.sender.Redact(ctx, ev.Bot, ev.RoomID, target, reason, ev.nextTxnID())
}

// Send sends any message event; content is marshalled to JSON.
func (ev *Event) Send(ctx context.Context, t event.Type, content any) (id.EventID, error) {
	return ev.send(ctx, t, content)
}

// messageBody returns the text of a message with the reply fallback
// ("> <@user> quoted" lines before a blank line) removed.
func messageBody(msg *event.MessageEventContent) string {
	body := msg.Body
	if msg.RelatesTo != nil && msg.RelatesTo.InReplyTo != nil && strings.HasPrefix(body, "> ") {
		lines := strings.Split(body, "\n")
		i := 0
		for i < len(lines) && strings.HasPrefix(lines[i], "> ") {
			i++
		}
		if i < len(lines) && lines[i] == "" {
			body = strings.Join(lines[i+1:], "\n")
		}
	}
	return strings.TrimSpace(body)
}

// ErrNoFile is returned by Download for a message without a file.
var ErrNoFile = errors.New("this message has no file")

// File returns the file message content of the triggering event, or nil.
func (ev *Event) File() *event.MessageEventContent {
	if ev.Raw == nil || ev.Raw.Type != event.EventMessage {
		return nil
	}
	msg, ok := ev.Raw.Content.Parsed.(*event.MessageEventContent)
	if !ok || (msg.URL == "" && msg.File == nil) {
		return nil
	}
	switch msg.MsgType {
	case event.MsgFile, event.MsgImage, event.MsgAudio, event.MsgVideo:
		return msg
	}
	return nil
}

// Download fetches (and decrypts) a file message's content, at most maxBytes.
func (ev *Event) Download(ctx context.Context, content *event.MessageEventContent, maxBytes int64) ([]byte, error) {
	if content == nil {
		return nil, ErrNoFile
	}
	if ev.media == nil {
		return nil, errors.New("file transfer is not available")
	}
	return ev.media.Download(ctx, ev.Bot, content, maxBytes)
}

// SendFile uploads data (encrypted in an encrypted room) and sends it as a
// file, image, audio or video message chosen from the MIME type.
func (ev *Event) SendFile(ctx context.Context, name, mimetype string, data []byte) (id.EventID, error) {
	if ev.media == nil {
		return "", errors.New("file transfer is not available")
	}
	url, file, err := ev.media.Upload(ctx, ev.Bot, ev.RoomID, data, mimetype, name)
	if err != nil {
		return "", err
	}
	msgtype := event.MsgFile
	switch {
	case strings.HasPrefix(mimetype, "image/"):
		msgtype = event.MsgImage
	case strings.HasPrefix(mimetype, "audio/"):
		msgtype = event.MsgAudio
	case strings.HasPrefix(mimetype, "video/"):
		msgtype = event.MsgVideo
	}
	c := &event.MessageEventContent{MsgType: msgtype, Body: name, FileName: name, URL: url, File: file,
		Info: &event.FileInfo{MimeType: mimetype, Size: len(data)}}
	if root := ev.threadRoot(); root != "" {
		c.RelatesTo = (&event.RelatesTo{}).SetThread(root, ev.ID)
	}
	return ev.send(ctx, event.EventMessage, c)
}

// ErrNoRooms is returned by room actions when opsbot runs without them (tests).
var ErrNoRooms = errors.New("room actions are not available")

func (ev *Event) roomsOrErr() (Rooms, error) {
	if ev.rooms == nil {
		return nil, ErrNoRooms
	}
	return ev.rooms, nil
}

// Message returns the message content of the event (the new content, for
// an edit), or nil if it is not a message.
func (ev *Event) Message() *event.MessageEventContent {
	if ev.Raw == nil {
		return nil
	}
	msg, ok := ev.Raw.Content.Parsed.(*event.MessageEventContent)
	if !ok {
		return nil
	}
	if msg.NewContent != nil && msg.RelatesTo != nil && msg.RelatesTo.Type == event.RelReplace {
		return msg.NewContent
	}
	return msg
}

// IsEdit reports whether the event edits an earlier message (m.replace).
func (ev *Event) IsEdit() bool {
	if ev.Raw == nil {
		return false
	}
	msg, ok := ev.Raw.Content.Parsed.(*event.MessageEventContent)
	return ok && msg.RelatesTo != nil && msg.RelatesTo.Type == event.RelReplace
}

// InReplyTo fetches the event the trigger replies to (decrypted in an
// encrypted room), or returns nil if it is not a reply.
func (ev *Event) InReplyTo(ctx context.Context) (*event.Event, error) {
	if ev.Raw == nil {
		return nil, nil
	}
	rel := ev.Raw.Content.AsMessage().RelatesTo
	if rel == nil || rel.InReplyTo == nil || rel.InReplyTo.EventID == "" {
		return nil, nil
	}
	r, err := ev.roomsOrErr()
	if err != nil {
		return nil, err
	}
	return r.Fetch(ctx, ev.Bot, ev.RoomID, rel.InReplyTo.EventID)
}

// ReplyInThread answers in the thread of the trigger, starting one on it
// if it is not in a thread yet.
func (ev *Event) ReplyInThread(ctx context.Context, text string) (id.EventID, error) {
	root := ev.threadRoot()
	if root == "" {
		root = ev.ID
	}
	c := &event.MessageEventContent{MsgType: event.MsgNotice, Body: text}
	c.RelatesTo = (&event.RelatesTo{}).SetThread(root, ev.ID)
	return ev.send(ctx, event.EventMessage, c)
}

// SendLocation sends a location (geo URI such as "geo:52.52,13.40").
func (ev *Event) SendLocation(ctx context.Context, description, geoURI string) (id.EventID, error) {
	c := &event.MessageEventContent{MsgType: event.MsgLocation, Body: description, GeoURI: geoURI}
	if root := ev.threadRoot(); root != "" {
		c.RelatesTo = (&event.RelatesTo{}).SetThread(root, ev.ID)
	}
	return ev.send(ctx, event.EventMessage, c)
}

// SendPoll starts a poll (MSC3381, as Element sends it) with one answer
// allowed per person. The plain-text body lists the answers for clients
// without polls.
func (ev *Event) SendPoll(ctx context.Context, question string, answers ...string) (id.EventID, error) {
	if len(answers) < 2 {
		return "", errors.New("a poll needs at least two answers")
	}
	fallback := question
	var options []map[string]any
	for i, a := range answers {
		fallback += fmt.Sprintf("\n%d. %s", i+1, a)
		options = append(options, map[string]any{"id": fmt.Sprintf("answer-%d", i+1), "org.matrix.msc1767.text": a})
	}
	content := map[string]any{
		"org.matrix.msc1767.text": fallback,
		"body":                    fallback,
		"org.matrix.msc3381.poll.start": map[string]any{
			"kind":           "org.matrix.msc3381.poll.disclosed",
			"max_selections": 1,
			"question":       map[string]any{"org.matrix.msc1767.text": question},
			"answers":        options,
		},
	}
	return ev.send(ctx, event.EventUnstablePollStart, content)
}

// SetTyping shows (or stops showing) the bot as typing in the room.
func (ev *Event) SetTyping(ctx context.Context, typing bool, timeout time.Duration) error {
	r, err := ev.roomsOrErr()
	if err != nil {
		return err
	}
	return r.Typing(ctx, ev.Bot, ev.RoomID, typing, timeout)
}

// MarkRead sends a read receipt for the trigger.
func (ev *Event) MarkRead(ctx context.Context) error {
	r, err := ev.roomsOrErr()
	if err != nil {
		return err
	}
	return r.MarkRead(ctx, ev.Bot, ev.RoomID, ev.ID)
}

// SetState sends a state event (the bot needs the power level for it).
func (ev *Event) SetState(ctx context.Context, t event.Type, stateKey string, content any) (id.EventID, error) {
	r, err := ev.roomsOrErr()
	if err != nil {
		return "", err
	}
	return r.SendState(ctx, ev.Bot, ev.RoomID, t, stateKey, content)
}

// SetRoomName renames the room.
func (ev *Event) SetRoomName(ctx context.Context, name string) (id.EventID, error) {
	return ev.SetState(ctx, event.StateRoomName, "", &event.RoomNameEventContent{Name: name})
}

// SetTopic sets the room topic.
func (ev *Event) SetTopic(ctx context.Context, topic string) (id.EventID, error) {
	return ev.SetState(ctx, event.StateTopic, "", &event.TopicEventContent{Topic: topic})
}

// SetRoomAvatar sets the room avatar (an mxc:// URI).
func (ev *Event) SetRoomAvatar(ctx context.Context, uri id.ContentURI) (id.EventID, error) {
	return ev.SetState(ctx, event.StateRoomAvatar, "", &event.RoomAvatarEventContent{URL: uri.CUString()})
}

// ChangeMembership invites, kicks, bans or unbans a user as the bot.
func (ev *Event) ChangeMembership(ctx context.Context, user id.UserID, action Membership, reason string) error {
	r, err := ev.roomsOrErr()
	if err != nil {
		return err
	}
	return r.Membership(ctx, ev.Bot, ev.RoomID, user, action, reason)
}
