package skills

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// BotSpec says which skills a bot runs and how people address it.
type BotSpec struct {
	ID     id.UserID
	Prefix string
	Skills []string
	// ConfigKey is where the bot is configured ("bots[0]"), for errors.
	ConfigKey string
}

// CommandHelp describes one command for !help.
type CommandHelp struct {
	Skill string
	Name  string
	Usage string // "!remind <duration> <text...>"
	Help  string
}

// Options configure an Engine.
type Options struct {
	Sender Sender
	// Media, if set, lets skills download and send files.
	Media Media
	// Rooms, if set, lets skills change room state, type, mark read,
	// manage membership and fetch earlier events.
	Rooms  Rooms
	Memory MemoryStore
	Log    zerolog.Logger
	// HandlerTimeout bounds one handler run (default ten minutes, so that a
	// handler outlasts a homeserver outage while its sends are retried).
	HandlerTimeout time.Duration
	// Allow, if set, applies permissions.skills: may sender use skill in room?
	Allow func(ctx context.Context, skill string, room id.RoomID, sender id.UserID) bool
	// Limit, if set, applies rate limits to answers (commands, regexes,
	// parse patterns): ok=false means drop; warn asks for one "slow down".
	Limit func(room id.RoomID, sender id.UserID) (ok, warn bool)
	// Schedules records cron runs (appservice/store implements it).
	Schedules ScheduleStore
	// Observe, if set, is told each handler run's skill, outcome (ok, error,
	// panic) and duration.
	Observe func(skill, outcome string, took time.Duration)
	// Host, if set, is what Router.Host gives skills.
	Host Host
}

// Engine routes events to the skills of each bot.
type Engine struct {
	opts     Options
	skills   map[string]Skill
	routes   map[string][]*route // by skill name
	bots     map[id.UserID]*BotSpec
	botOrder []*BotSpec
	byBot    map[id.UserID][]*route
}

// NewEngine sets up the given skills for the given bots. Every skill named by
// a bot must be in available, every config section must belong to a skill a
// bot runs, and every skill's Setup must succeed; errors name the config key.
func NewEngine(opts Options, available []Skill, sections map[string]yaml.Node, bots []BotSpec) (*Engine, error) {
	if opts.HandlerTimeout == 0 {
		opts.HandlerTimeout = 10 * time.Minute
	}
	e := &Engine{opts: opts, skills: map[string]Skill{}, routes: map[string][]*route{}, bots: map[id.UserID]*BotSpec{}}
	byName := map[string]Skill{}
	var names []string
	var errs []error
	for _, s := range available {
		if _, dup := byName[s.Name()]; dup {
			errs = append(errs, fmt.Errorf("two skills are named %q (an external skill may not take a built-in skill's name)", s.Name()))
			continue
		}
		byName[s.Name()] = s
		names = append(names, s.Name())
	}
	sort.Strings(names)
	used := map[string]bool{}
	for i := range bots {
		b := bots[i]
		e.bots[b.ID] = &b
		e.botOrder = append(e.botOrder, &b)
		for j, name := range b.Skills {
			if _, ok := byName[name]; !ok {
				errs = append(errs, fmt.Errorf("%s.skills[%d]: unknown skill %q (available: %s)", b.ConfigKey, j, name, strings.Join(names, ", ")))
				continue
			}
			used[name] = true
		}
	}
	for name := range sections {
		if _, ok := byName[name]; !ok {
			errs = append(errs, fmt.Errorf("skills.%s: unknown skill %q (available: %s)", name, name, strings.Join(names, ", ")))
		} else if !used[name] {
			errs = append(errs, fmt.Errorf("skills.%s: no bot runs this skill; add it to a bot's skills or remove the section", name))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	for _, name := range names {
		if !used[name] {
			continue
		}
		s := byName[name]
		var cfg Config
		if node, ok := sections[name]; ok {
			cfg = NewConfig(name, &node)
		} else {
			cfg = NewConfig(name, nil)
		}
		r := newRouter(name)
		r.host = opts.Host
		if err := s.Setup(r, cfg); err != nil {
			return nil, fmt.Errorf("skill %s: %w", name, err)
		}
		if r.err != nil {
			return nil, r.err
		}
		e.skills[name] = s
		e.routes[name] = r.routes
	}
	e.byBot = map[id.UserID][]*route{}
	for _, b := range e.botOrder {
		for _, name := range b.Skills {
			e.byBot[b.ID] = append(e.byBot[b.ID], e.routes[name]...)
		}
		// Two skills of one bot must not claim the same command word.
		owner := map[string]string{}
		for _, rt := range e.byBot[b.ID] {
			if rt.kind != kindCommand {
				continue
			}
			if prev, ok := owner[rt.command.name]; ok && prev != rt.skill {
				return nil, fmt.Errorf("%s: skills %s and %s both define the command %q", b.ConfigKey, prev, rt.skill, rt.command.name)
			}
			owner[rt.command.name] = rt.skill
		}
	}
	return e, nil
}

// botRoutes returns the routes of a bot's skills, in the order of its skill
// list (computed once in NewEngine: every event walks them).
func (e *Engine) botRoutes(b *BotSpec) []*route { return e.byBot[b.ID] }

// CommandsFor lists the commands a bot answers, in skill order.
func (e *Engine) CommandsFor(bot id.UserID) []CommandHelp {
	b := e.bots[bot]
	if b == nil {
		return nil
	}
	var out []CommandHelp
	for _, rt := range e.botRoutes(b) {
		if rt.kind == kindCommand && (len(rt.opts.bots) == 0 || slices.Contains(rt.opts.bots, bot)) {
			out = append(out, CommandHelp{Skill: rt.skill, Name: rt.command.name, Usage: rt.command.usage(b.Prefix), Help: rt.opts.help})
		}
	}
	return out
}

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
		if isText {
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
				if !isText || (isEdit && !rt.opts.edits) || !rt.allows(b.ID, evt.RoomID, evt.Sender) || !e.allowed(ctx, rt, evt) {
					continue
				}
				m := rt.regex.FindStringSubmatch(body)
				if m == nil {
					continue
				}
				matched = true
				if limited(b) {
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
				if !isText || isCmd || (isEdit && !rt.opts.edits) || !rt.allows(b.ID, evt.RoomID, evt.Sender) || !e.allowed(ctx, rt, evt) {
					continue
				}
				args, values, ok := rt.parse.match(body)
				if !ok {
					continue
				}
				matched = true
				if limited(b) {
					continue
				}
				ev := e.newEvent(evt, b, rt, body)
				ev.Args, ev.Values = args, values
				e.run(ctx, rt, ev)
			case kindEvent:
				if evt.Type != rt.evtType || !rt.allows(b.ID, evt.RoomID, evt.Sender) || !e.allowed(ctx, rt, evt) {
					continue
				}
				e.run(ctx, rt, e.newEvent(evt, b, rt, body))
			}
		}
		if isText && !isEdit && !matched && !isCmd {
			for _, rt := range e.botRoutes(b) {
				if rt.kind == kindFallback && rt.allows(b.ID, evt.RoomID, evt.Sender) && e.allowed(ctx, rt, evt) {
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
		if rt.allows(b.ID, evt.RoomID, evt.Sender) && e.allowed(ctx, rt, evt) {
			allowed = append(allowed, rt)
		}
	}
	if len(allowed) == 0 {
		ev := e.newEvent(evt, b, cmds[0], body)
		e.notice(ctx, ev, fmt.Sprintf("You are not allowed to use %s%s here.", b.Prefix, cmdName))
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

// allowed applies permissions.skills to a route.
func (e *Engine) allowed(ctx context.Context, rt *route, evt *event.Event) bool {
	return e.opts.Allow == nil || e.opts.Allow(ctx, rt.skill, evt.RoomID, evt.Sender)
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

// run calls a handler, turning errors and panics into a log line and a short
// apology in the room; the process and the other skills carry on.
func (e *Engine) run(ctx context.Context, rt *route, ev *Event) {
	log := e.opts.Log.With().Str("skill", rt.skill).Stringer("room_id", ev.RoomID).
		Stringer("event_id", ev.ID).Stringer("bot", ev.Bot).Logger()
	ctx, cancel := context.WithTimeout(log.WithContext(ctx), e.opts.HandlerTimeout)
	defer cancel()
	start := time.Now()
	outcome := "ok"
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("panic: %v", p)
				outcome = "panic"
				log.Error().Str("stack", string(debug.Stack())).Msg("Skill handler panicked")
			}
		}()
		return rt.handler(ctx, ev)
	}()
	if err != nil && outcome == "ok" {
		outcome = "error"
	}
	if e.opts.Observe != nil {
		e.opts.Observe(rt.skill, outcome, time.Since(start))
	}
	if err != nil {
		log.Error().Err(err).Dur("took", time.Since(start)).Msg("Skill handler failed")
		e.notice(context.WithoutCancel(ctx), ev, fmt.Sprintf("Sorry, the %s skill failed while handling that. The error has been logged.", rt.skill))
		return
	}
	log.Debug().Dur("took", time.Since(start)).Msg("Skill handler done")
}

func (e *Engine) notice(ctx context.Context, ev *Event, text string) {
	reply := ev.Reply
	if ev.Raw == nil { // cron or webhook: nothing to reply to
		if ev.RoomID == "" {
			return
		}
		reply = ev.Respond
	}
	if _, err := reply(ctx, text); err != nil {
		e.opts.Log.Error().Err(err).Stringer("room_id", ev.RoomID).Msg("Failed to send notice")
	}
}

// Notify sends a notice as bot in reply to an event, outside any skill (for
// opsbot's own messages, such as "I could not decrypt your message").
func (e *Engine) Notify(ctx context.Context, bot id.UserID, evt *event.Event, text string) {
	b := e.bots[bot]
	if b == nil {
		return
	}
	e.notice(ctx, e.newEvent(evt, b, &route{skill: "opsbot"}, ""), text)
}
