package skills

import (
	"fmt"
	"regexp"
	"slices"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Router collects one skill's matchers. Each registration method takes
// options (Help, InRooms, FromUsers, ForBots) after the handler.
type Router struct {
	skill  string
	routes []*route
	err    error
}

type routeKind int

const (
	kindCommand routeKind = iota
	kindRegex
	kindEvent
	kindFallback
)

type route struct {
	skill   string
	kind    routeKind
	command *commandPattern
	regex   *regexp.Regexp
	evtType event.Type
	handler Handler
	opts    routeOptions
}

type routeOptions struct {
	help  string
	rooms []id.RoomID
	users []id.UserID
	bots  []id.UserID
	// edits makes a command or regex also run on edited messages (m.replace).
	edits bool
}

// Option refines a registration.
type Option func(*routeOptions)

// Help sets the one-line description shown by !help.
func Help(text string) Option { return func(o *routeOptions) { o.help = text } }

// InRooms restricts the route to these rooms.
func InRooms(rooms ...id.RoomID) Option {
	return func(o *routeOptions) { o.rooms = append(o.rooms, rooms...) }
}

// FromUsers restricts the route to events sent by these users.
func FromUsers(users ...id.UserID) Option {
	return func(o *routeOptions) { o.users = append(o.users, users...) }
}

// ForBots restricts the route to these bot users (when several bots run the skill).
func ForBots(bots ...id.UserID) Option {
	return func(o *routeOptions) { o.bots = append(o.bots, bots...) }
}

// OnEdits lets a command or regex match again when its message is edited.
func OnEdits() Option { return func(o *routeOptions) { o.edits = true } }

func newRouter(skill string) *Router { return &Router{skill: skill} }

func (r *Router) add(rt *route, opts []Option) {
	rt.skill = r.skill
	for _, o := range opts {
		o(&rt.opts)
	}
	r.routes = append(r.routes, rt)
}

func (r *Router) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

// Command registers a command such as "remind {duration} {text...}"; people
// invoke it with the bot's prefix ("!remind 10m check the deploy"). The
// handler finds the placeholders in ev.Args. One skill may register several
// patterns with the same command word ("note add {text...}", "note list"):
// the first whose words fit runs.
func (r *Router) Command(pattern string, h Handler, opts ...Option) {
	cp, err := parseCommandPattern(pattern)
	if err != nil {
		r.fail(fmt.Errorf("skill %s: %w", r.skill, err))
		return
	}
	for _, other := range r.routes {
		if other.kind == kindCommand && other.command.raw == cp.raw {
			r.fail(fmt.Errorf("skill %s: command %q registered twice", r.skill, cp.raw))
			return
		}
	}
	r.add(&route{kind: kindCommand, command: cp, handler: h}, opts)
}

// Regex registers a regular expression matched against the text of every
// message. Submatches land in ev.Match and named groups in ev.Args.
func (r *Router) Regex(expr string, h Handler, opts ...Option) {
	re, err := regexp.Compile(expr)
	if err != nil {
		r.fail(fmt.Errorf("skill %s: invalid regex %q: %w", r.skill, expr, err))
		return
	}
	r.add(&route{kind: kindRegex, regex: re, handler: h}, opts)
}

// Event registers a handler for every event of one type (reactions,
// membership changes, room topics, ...), including the bots' own events
// only when they are state events.
func (r *Router) Event(t event.Type, h Handler, opts ...Option) {
	r.add(&route{kind: kindEvent, evtType: t, handler: h}, opts)
}

// Fallback registers a handler for text messages that no command or regex of
// the bot matched (opsdroid's catch-all).
func (r *Router) Fallback(h Handler, opts ...Option) {
	r.add(&route{kind: kindFallback, handler: h}, opts)
}

// allows checks the route's constraints for an event.
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
