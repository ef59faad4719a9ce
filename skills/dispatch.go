package skills

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Handle routes one event to the bots in roomBots (our bots joined to the
// room, in config order). It returns when every handler has finished.
func (e *Engine) Handle(ctx context.Context, evt *event.Event, roomBots []id.UserID) {
	if _, ours := e.bots[evt.Sender]; ours {
		return // never answer ourselves or each other
	}
	body, isEdit, isText := textOf(evt)
	if evt.Type == event.EventMessage && !isText {
		e.logOddMessage(evt)
	}
	var unknown *BotSpec // first bot that would hint at an unknown command
	knownSomewhere := false
	limited := e.limiter(ctx, evt)
	for _, botID := range roomBots {
		b := e.bots[botID]
		if b == nil {
			continue
		}
		matched := false
		cmdName, argText, isCmd := "", "", false
		if name, text, problem, ok := e.structuredCommand(evt, b); ok {
			if problem != "" {
				knownSomewhere = true
				if !limited(b) {
					e.notice(ctx, e.newEvent(evt, b, &route{skill: "opsbot"}, body), "I could not run that: "+problem+".")
				}
				continue
			}
			cmdName, argText, isCmd = name, text, true
		} else if isText && !invokesAnother(evt) {
			cmdName, argText, isCmd = splitCommand(body, b.Prefix)
		}
		if isCmd {
			var cmds []*route
			for _, rt := range e.botRoutes(b) {
				if rt.kind == kindCommand && rt.command.name == cmdName && (!isEdit || rt.opts.edits) {
					cmds = append(cmds, rt)
				}
			}
			if len(cmds) > 0 {
				knownSomewhere, matched = true, true
				if !limited(b) {
					e.runCommand(ctx, evt, b, cmds, cmdName, argText, body)
				}
			}
		}
		for _, rt := range e.botRoutes(b) {
			switch rt.kind {
			case kindRegex:
				if !isText || (isEdit && !rt.opts.edits) || !e.permits(ctx, b, rt, evt) {
					continue
				}
				m := rt.regex.FindStringSubmatch(body)
				if m == nil {
					continue
				}
				matched = true
				if limited(b) || !e.trusted(ctx, b, rt, evt, body) {
					continue
				}
				ev := e.newEvent(evt, b, rt, body)
				ev.Match = m
				ev.Args = map[string]string{}
				for i, name := range rt.regex.SubexpNames() {
					if name != "" {
						ev.Args[name] = m[i]
					}
				}
				e.run(ctx, rt, ev)
			case kindParse:
				if !isText || isCmd || (isEdit && !rt.opts.edits) || !e.permits(ctx, b, rt, evt) {
					continue
				}
				args, values, ok := rt.parse.match(body)
				if !ok {
					continue
				}
				matched = true
				if limited(b) || !e.trusted(ctx, b, rt, evt, body) {
					continue
				}
				ev := e.newEvent(evt, b, rt, body)
				ev.Args, ev.Values = args, values
				e.run(ctx, rt, ev)
			case kindEvent:
				if evt.Type != rt.evtType || !e.permits(ctx, b, rt, evt) {
					continue
				}
				e.run(ctx, rt, e.newEvent(evt, b, rt, body))
			}
		}
		if isText && !isEdit && !matched && !isCmd {
			for _, rt := range e.botRoutes(b) {
				if rt.kind == kindFallback && e.permits(ctx, b, rt, evt) {
					e.run(ctx, rt, e.newEvent(evt, b, rt, body))
				}
			}
		}
		if isCmd && !isEdit && unknown == nil {
			unknown = b
		}
	}
	if unknown != nil && !knownSomewhere {
		cmdName, _, _ := splitCommand(body, unknown.Prefix)
		ev := e.newEvent(evt, unknown, &route{skill: "help"}, body)
		hint := fmt.Sprintf("Unknown command %s%s. Send %shelp for the list of commands.", unknown.Prefix, cmdName, unknown.Prefix)
		e.notice(ctx, ev, hint)
	}
}

// runCommand runs the first of a command word's patterns whose arguments
// fit; when none fits it answers with their usage lines.
func (e *Engine) runCommand(ctx context.Context, evt *event.Event, b *BotSpec, cmds []*route, cmdName, argText, body string) {
	var allowed []*route
	for _, rt := range cmds {
		if e.permits(ctx, b, rt, evt) {
			allowed = append(allowed, rt)
		}
	}
	if len(allowed) == 0 {
		ev := e.newEvent(evt, b, cmds[0], body)
		e.notice(ctx, ev, fmt.Sprintf("You are not allowed to use %s%s here.", b.Prefix, cmdName))
		return
	}
	// One command word belongs to one skill: one trust decision.
	if !e.trusted(ctx, b, allowed[0], evt, body) {
		return
	}
	for _, rt := range allowed {
		if args, ok := rt.command.match(argText); ok {
			ev := e.newEvent(evt, b, rt, body)
			ev.Command, ev.Args = cmdName, args
			e.run(ctx, rt, ev)
			return
		}
	}
	usages := make([]string, len(allowed))
	for i, rt := range allowed {
		usages[i] = rt.command.usage(b.Prefix)
	}
	e.notice(ctx, e.newEvent(evt, b, allowed[0], body), "Usage: "+strings.Join(usages, " | "))
}

// permits is the permission guard of every kind of route: may this event
// reach rt as bot b? First the route's own limits (ForBots, InRooms,
// FromUsers), then permissions.skills, which may ask the homeserver for a
// power level and so comes last.
func (e *Engine) permits(ctx context.Context, b *BotSpec, rt *route, evt *event.Event) bool {
	return rt.allows(b.ID, evt.RoomID, evt.Sender) &&
		(e.opts.Allow == nil || e.opts.Allow(ctx, rt.skill, evt.RoomID, evt.Sender))
}

// trusted applies encryption.command_trust to a command, regex or parse
// match that passed permits: may the device it came from command skill?
// A refusal's answer, if any, goes to the sender as a notice.
func (e *Engine) trusted(ctx context.Context, b *BotSpec, rt *route, evt *event.Event, body string) bool {
	if e.opts.Trust == nil {
		return true
	}
	ok, answer := e.opts.Trust(ctx, rt.skill, evt)
	if !ok && answer != "" {
		e.notice(ctx, e.newEvent(evt, b, rt, body), answer)
	}
	return ok
}

// allows checks the route's own limits: ForBots, InRooms, FromUsers.
func (rt *route) allows(bot id.UserID, room id.RoomID, sender id.UserID) bool {
	if len(rt.opts.bots) > 0 && !slices.Contains(rt.opts.bots, bot) {
		return false
	}
	if len(rt.opts.rooms) > 0 && !slices.Contains(rt.opts.rooms, room) {
		return false
	}
	if len(rt.opts.users) > 0 && !slices.Contains(rt.opts.users, sender) {
		return false
	}
	return true
}

// limiter returns a function that applies the rate limit to an event once,
// however many bots and routes answer it; the first refusal in a minute
// gets one polite notice from the bot about to answer.
func (e *Engine) limiter(ctx context.Context, evt *event.Event) func(b *BotSpec) (limited bool) {
	checked, over := false, false
	return func(b *BotSpec) bool {
		if e.opts.Limit == nil {
			return false
		}
		if !checked {
			checked = true
			ok, warn := e.opts.Limit(evt.RoomID, evt.Sender)
			over = !ok
			if warn {
				e.notice(ctx, e.newEvent(evt, b, &route{skill: "opsbot"}, ""), "Slow down, please: I answer a limited number of commands per minute. Try again in a minute.")
			}
		}
		return over
	}
}

// textOf returns the text a matcher sees: message bodies of text, emote and
// notice... except notices, which bots send and must not trigger commands.
func textOf(evt *event.Event) (body string, isEdit, isText bool) {
	if evt.Type != event.EventMessage {
		return "", false, false
	}
	msg, ok := evt.Content.Parsed.(*event.MessageEventContent)
	if !ok {
		return "", false, false
	}
	if msg.RelatesTo != nil && msg.RelatesTo.Type == event.RelReplace {
		if msg.NewContent == nil {
			return "", true, false
		}
		isEdit = true
		msg = msg.NewContent
	}
	switch msg.MsgType {
	case event.MsgText, event.MsgEmote:
		return messageBody(msg), isEdit, true
	}
	return "", isEdit, false
}

// knownMsgTypes are the message types of the spec; others are passed to
// event matchers but logged, since clients will show them oddly.
var knownMsgTypes = map[event.MessageType]bool{
	event.MsgText: true, event.MsgEmote: true, event.MsgNotice: true, event.MsgImage: true, event.MsgFile: true,
	event.MsgAudio: true, event.MsgVideo: true, event.MsgLocation: true, event.MsgVerificationRequest: true,
	"m.server_notice": true,
}

func (e *Engine) logOddMessage(evt *event.Event) {
	msg, ok := evt.Content.Parsed.(*event.MessageEventContent)
	if !ok || knownMsgTypes[msg.MsgType] || (msg.RelatesTo != nil && msg.RelatesTo.Type == event.RelReplace) {
		return
	}
	e.opts.Log.Debug().Stringer("event_id", evt.ID).Str("msgtype", string(msg.MsgType)).Msg("Message with an unknown msgtype: no command or regex runs on it")
}

// invokesAnother reports a structured invocation (MSC4391) that is not
// addressed to the bot at hand: its text form is not a command for it.
// (One addressed to it was taken by structuredCommand.)
func invokesAnother(evt *event.Event) bool {
	msg, _ := evt.Content.Parsed.(*event.MessageEventContent)
	return msg != nil && msg.MSC4391BotCommand != nil
}
