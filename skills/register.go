package skills

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/opsbot/opsbot/skills/internal/cron"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Router collects one skill's matchers. Each registration method takes
// options (Help, InRooms, FromUsers, ForBots) after the handler.
type Router struct {
	skill  string
	host   Host
	routes []*route
	err    error
}

// Host is the opsbot running the skill, for the few skills that act on it
// (the admin skill); nil where there is none, as in most tests.
func (r *Router) Host() Host { return r.host }

type routeKind int

const (
	kindCommand routeKind = iota
	kindRegex
	kindEvent
	kindFallback
	kindParse
	kindCron
	kindWebhook
)

type route struct {
	skill   string
	kind    routeKind
	command *commandPattern
	regex   *regexp.Regexp
	evtType event.Type
	parse   *parsePattern
	cron    cron.Schedule
	spec    string // cron spec or webhook path, as registered
	handler Handler
	webhook WebhookHandler
	opts    routeOptions
}

type routeOptions struct {
	help string
	// argHelp describes a command's placeholders, by name.
	argHelp map[string]string
	rooms   []id.RoomID
	users   []id.UserID
	bots    []id.UserID
	// edits makes a command or regex also run on edited messages (m.replace).
	edits bool
	// location is the time zone of a cron schedule.
	location *time.Location
	// webhook authentication and body limit.
	token, hmacSecret, hmacHeader string
	maxBody                       int64
	repeatsAreSafe                bool
}

// Option refines a registration.
type Option func(*routeOptions)

// Help sets the one-line description shown by !help and published as the
// command's description (MSC4391).
func Help(text string) Option { return func(o *routeOptions) { o.help = text } }

// ArgHelp describes one of a command's placeholders, for !help <command>
// and the published command description.
func ArgHelp(name, text string) Option {
	return func(o *routeOptions) {
		if o.argHelp == nil {
			o.argHelp = map[string]string{}
		}
		o.argHelp[name] = text
	}
}

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

// In sets the time zone a cron schedule is read in (default UTC).
func In(loc *time.Location) Option { return func(o *routeOptions) { o.location = loc } }

// WithToken makes a webhook require this shared token, as
// "Authorization: Bearer <token>" or "?token=<token>".
func WithToken(token string) Option { return func(o *routeOptions) { o.token = token } }

// WithHMAC makes a webhook require an HMAC-SHA256 signature made with
// secret: of the body in header (GitHub's X-Hub-Signature-256 style:
// "sha256=<hex>"), or of the delivery's ID, time and body the Standard
// Webhooks way (webhook-id, webhook-timestamp, webhook-signature), which a
// sender may use instead. A signed delivery is taken once: the same
// Standard Webhooks ID within ReplayTolerance, or the same signed body
// within BodyReplayWindow, is refused (409).
func WithHMAC(secret, header string) Option {
	return func(o *routeOptions) { o.hmacSecret, o.hmacHeader = secret, header }
}

// RepeatsAreSafe lets a signed webhook take the same body again: for a
// handler to which an identical delivery means nothing new (Alertmanager
// repeats a notification unchanged at its repeat_interval).
func RepeatsAreSafe() Option { return func(o *routeOptions) { o.repeatsAreSafe = true } }

// MaxBody caps a webhook's request body (default 1 MiB).
func MaxBody(n int64) Option { return func(o *routeOptions) { o.maxBody = n } }

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
	rt := &route{kind: kindCommand, command: cp, handler: h}
	r.add(rt, opts)
	for name := range rt.opts.argHelp {
		if !slices.ContainsFunc(cp.parts, func(p patternPart) bool { return p.arg == name }) {
			r.fail(fmt.Errorf("skill %s: command %q has no placeholder {%s} to describe", r.skill, cp.raw, name))
		}
	}
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

// Parse registers an opsdroid match_parse style pattern matched against
// the whole text of a message: "remind me in {minutes:d} minutes to {task}".
// {name} takes any text, {name:w} one word, {name:d} an integer and
// {name:f} a number; ev.Args has the text, ev.Values the typed values.
func (r *Router) Parse(pattern string, h Handler, opts ...Option) {
	pp, err := compileParse(pattern)
	if err != nil {
		r.fail(fmt.Errorf("skill %s: %w", r.skill, err))
		return
	}
	r.add(&route{kind: kindParse, parse: pp, handler: h}, opts)
}

// Cron runs h on a schedule: five-field crontab ("0 9 * * MON-FRI") or
// @every/@hourly/@daily/@weekly/@monthly/@yearly. With InRooms it runs once
// per room (ev.RoomID set); otherwise once, with ev.RoomID empty and
// ev.Memory the skill's memory outside any room. Only the leader runs
// schedules; each run is recorded, so a restart neither repeats nor (beyond
// the latest missed run) replays them.
func (r *Router) Cron(spec string, h Handler, opts ...Option) {
	s, err := cron.Parse(spec)
	if err != nil {
		r.fail(fmt.Errorf("skill %s: %w", r.skill, err))
		return
	}
	r.add(&route{kind: kindCron, cron: s, spec: spec, handler: h}, opts)
}

// WebhookHandler handles one authenticated webhook request. The Event has
// no Raw event; it acts as the skill's bot, and ev.Memory is the skill's
// memory outside any room.
type WebhookHandler func(ctx context.Context, ev *Event, req *WebhookRequest) error

// WebhookRequest is an authenticated webhook call.
type WebhookRequest struct {
	Path   string // below /skills/<skill>, e.g. "/alerts"
	Header http.Header
	Query  url.Values
	Body   []byte
}

// Webhook exposes POST /skills/<skill><path> on the appservice listener.
// It must be authenticated with WithToken or WithHMAC (or both).
func (r *Router) Webhook(path string, h WebhookHandler, opts ...Option) {
	if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, "?#") {
		r.fail(fmt.Errorf("skill %s: webhook path %q must start with / and have no query", r.skill, path))
		return
	}
	rt := &route{kind: kindWebhook, spec: path, webhook: h}
	r.add(rt, opts)
	if rt.opts.token == "" && rt.opts.hmacSecret == "" {
		r.fail(fmt.Errorf("skill %s: webhook %s needs a token or an HMAC secret (skills.%s config)", r.skill, path, r.skill))
	}
	if rt.opts.maxBody == 0 {
		rt.opts.maxBody = 1 << 20
	}
}

// Fallback registers a handler for text messages that no command or regex of
// the bot matched (opsdroid's catch-all).
func (r *Router) Fallback(h Handler, opts ...Option) {
	r.add(&route{kind: kindFallback, handler: h}, opts)
}
