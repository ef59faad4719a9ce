package skills

import (
	"context"
	"errors"
	"fmt"
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
	// Args are the placeholders that have a description (ArgHelp).
	Args []ArgHelpLine
}

// ArgHelpLine describes one placeholder of a command.
type ArgHelpLine struct {
	Name, Type string
	Optional   bool
	Help       string
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
	// Trust, if set, decides with the event in hand whether a command (or a
	// regex or parse match) of skill is acted on, by who sent it from which
	// device (encryption.command_trust). When ok is false and answer is not
	// empty, the engine sends answer as a notice in reply.
	Trust func(ctx context.Context, skill string, evt *event.Event) (ok bool, answer string)
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
	// Privileges, if set, says what each skill may do beyond its own
	// messages (permissions.skills.<skill>); nil grants nothing.
	Privileges func(skill string) Privileges
	// Deliveries, if set, remembers signed webhook deliveries across
	// engines (configuration reloads); nil gives the engine its own.
	Deliveries *Seen
}

// Engine routes events to the skills of each bot.
type Engine struct {
	opts     Options
	skills   map[string]Skill
	routes   map[string][]*route // by skill name
	bots     map[id.UserID]*BotSpec
	botOrder []*BotSpec
	byBot    map[id.UserID][]*route
	// own are events the bots sent lately, so that editing one right
	// after sending it needs no lookup (a homeserver may not serve an
	// event it just accepted).
	own recentEvents
}

// NewEngine sets up the given skills for the given bots. Every skill named by
// a bot must be in available, every config section must belong to a skill a
// bot runs, and every skill's Setup must succeed; errors name the config key.
func NewEngine(opts Options, available []Skill, sections map[string]yaml.Node, bots []BotSpec) (*Engine, error) {
	if opts.HandlerTimeout == 0 {
		opts.HandlerTimeout = 10 * time.Minute
	}
	if opts.Deliveries == nil {
		opts.Deliveries = NewSeen()
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

// owner is the bot that runs a cron job or answers a webhook: the first
// bot (in config order) that runs the skill and passes ForBots.
func (e *Engine) owner(rt *route) id.UserID {
	for _, b := range e.orderedBots() {
		for _, name := range b.Skills {
			if name == rt.skill && (len(rt.opts.bots) == 0 || slices.Contains(rt.opts.bots, b.ID)) {
				return b.ID
			}
		}
	}
	return ""
}

// orderedBots returns the bots in config order.
func (e *Engine) orderedBots() []*BotSpec { return e.botOrder }

// CommandsFor lists the commands a bot answers, in skill order.
func (e *Engine) CommandsFor(bot id.UserID) []CommandHelp {
	b := e.bots[bot]
	if b == nil {
		return nil
	}
	var out []CommandHelp
	for _, rt := range e.botRoutes(b) {
		if rt.kind == kindCommand && (len(rt.opts.bots) == 0 || slices.Contains(rt.opts.bots, bot)) {
			ch := CommandHelp{Skill: rt.skill, Name: rt.command.name, Usage: rt.command.usage(b.Prefix), Help: rt.opts.help}
			for _, p := range rt.command.parts {
				if h := rt.opts.argHelp[p.arg]; p.arg != "" && h != "" {
					ch.Args = append(ch.Args, ArgHelpLine{Name: p.arg, Type: string(p.typ), Optional: p.optional, Help: h})
				}
			}
			out = append(out, ch)
		}
	}
	return out
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
