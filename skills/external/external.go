// Package external runs skills written in any language, served over HTTP.
// An external skill is declared in opsbot.yaml (external_skills) with the
// commands, regexes and event types it matches. For each matched event,
// opsbot POSTs a signed JSON description of it (room, sender, text,
// relations, decrypted content, what matched, the skill's memory in the
// room) to the skill's URL, and performs the actions the JSON answer asks
// for: reply, respond, react, edit, redact, send a file, set or delete
// memory. See README.md for the protocol.
//
// Calls have a timeout, are retried with backoff on network errors, 5xx
// and 429 (waiting as long as Retry-After asks), and go through a circuit breaker per skill; an answer that does
// not follow the protocol is an error naming the problem.
package external

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/retry"
)

// Defaults of the transport; tests shorten them.
const (
	// DefaultTimeout bounds one request when the config gives none.
	DefaultTimeout = 5 * time.Second
	// FirstBackoff is the pause before the first retry; it doubles after each.
	FirstBackoff = 200 * time.Millisecond
	// MaxRetryAfter caps the pause a skill may ask for with Retry-After.
	MaxRetryAfter = 30 * time.Second
	// BreakerThreshold is how many consecutive failed calls open the circuit.
	BreakerThreshold = 5
	// BreakerOpenFor is how long an open circuit fails calls at once.
	BreakerOpenFor = 30 * time.Second
)

// ErrUnavailable is wrapped by the error of a call refused because the
// skill's circuit is open.
var ErrUnavailable = errors.New("unavailable")

// ErrNonsense is wrapped by the error of an answer that does not follow the
// protocol.
var ErrNonsense = errors.New("answered nonsense")

// Skill is one external skill.
type Skill struct {
	c   Config
	key string // "external_skills[2]", for config errors
	log zerolog.Logger
	// setupErr refuses Setup (a name given twice in external_skills).
	setupErr error

	client  *http.Client
	target  string // the URL without query and user info, for messages
	backoff time.Duration
	now     func() time.Time
	sleep   func(ctx context.Context, d time.Duration) error
	breaker breaker
}

// New returns the skill described by one external_skills entry.
func New(c Config, log zerolog.Logger) skills.Skill {
	return newSkill(c, "external_skills["+c.Name+"]", log)
}

// FromConfig returns one skill per external_skills entry, to be offered
// beside the built-in skills. A name given twice makes the later entry's
// Setup fail.
func FromConfig(list []Config, log zerolog.Logger) []skills.Skill {
	out := make([]skills.Skill, 0, len(list))
	first := map[string]int{}
	for i, c := range list {
		s := newSkill(c, fmt.Sprintf("external_skills[%d]", i), log)
		if j, dup := first[c.Name]; dup {
			s.setupErr = fmt.Errorf("%s.name: %q is already the name of external_skills[%d]", s.key, c.Name, j)
		} else {
			first[c.Name] = i
		}
		out = append(out, s)
	}
	return out
}

func newSkill(c Config, key string, log zerolog.Logger) *Skill {
	if c.Timeout <= 0 {
		c.Timeout = skills.Duration(DefaultTimeout)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 8
	s := &Skill{
		c:   c,
		key: key,
		log: log.With().Str("skill", c.Name).Logger(),
		client: &http.Client{
			Transport: transport,
			// A redirect would resend the signed body elsewhere (or drop it,
			// for 301/302): the configured URL must be the final one.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		target:  displayURL(c.URL),
		backoff: FirstBackoff,
		now:     time.Now,
		sleep:   retry.Sleep,
		breaker: breaker{threshold: BreakerThreshold, openFor: BreakerOpenFor},
	}
	return s
}

// displayURL drops the query and user info, which may hold credentials.
func displayURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(invalid url)"
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.String()
}

// Name is the skill's name from its external_skills entry.
func (s *Skill) Name() string { return s.c.Name }

// Setup checks the entry's patterns and registers its matchers. The
// skills.<name> section must be absent or empty: external skills are
// configured in external_skills.
func (s *Skill) Setup(r *skills.Router, cfg skills.Config) error {
	if s.setupErr != nil {
		return s.setupErr
	}
	var none struct{}
	if err := cfg.Decode(&none); err != nil {
		return fmt.Errorf("%w (an external skill takes no settings here: configure it in %s)", err, s.key)
	}
	if u, err := url.Parse(s.c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%s.url: %q is not an http(s) URL", s.key, s.c.URL)
	}
	if s.c.Secret == "" {
		return fmt.Errorf("%s.secret: missing (set it in the file or in %s)", s.key, SecretEnv(s.c.Name))
	}
	if len(s.c.Commands)+len(s.c.Regexes)+len(s.c.Events) == 0 {
		return fmt.Errorf("%s: matches nothing: give it commands, regexes or events", s.key)
	}
	seen := map[string]int{}
	for i, c := range s.c.Commands {
		if err := checkPattern(c.Pattern); err != nil {
			return fmt.Errorf("%s.commands[%d].pattern: %v", s.key, i, err)
		}
		norm := strings.ToLower(strings.Join(strings.Fields(c.Pattern), " "))
		if j, dup := seen[norm]; dup {
			return fmt.Errorf("%s.commands[%d].pattern: %q is also commands[%d]", s.key, i, c.Pattern, j)
		}
		seen[norm] = i
	}
	regexes := make([]*regexp.Regexp, len(s.c.Regexes))
	for i, expr := range s.c.Regexes {
		re, err := regexp.Compile(expr)
		if err != nil {
			return fmt.Errorf("%s.regexes[%d]: invalid regex %q: %v", s.key, i, expr, err)
		}
		regexes[i] = re
	}
	var types [][]event.Type
	for i, t := range s.c.Events {
		et, err := eventTypes(t)
		if err != nil {
			return fmt.Errorf("%s.events[%d]: %v", s.key, i, err)
		}
		types = append(types, et)
	}

	for _, c := range s.c.Commands {
		var opts []skills.Option
		if c.Help != "" {
			opts = append(opts, skills.Help(c.Help))
		}
		r.Command(c.Pattern, s.handler("command", strings.Join(strings.Fields(c.Pattern), " ")), opts...)
	}
	for _, re := range regexes {
		r.Regex(re.String(), s.handler("regex", re.String()))
	}
	for i, ets := range types {
		for _, et := range ets {
			r.Event(et, s.handler("event", s.c.Events[i]))
		}
	}
	return nil
}

// probe is a throwaway skill registering one command, to check a pattern
// with the router's own parser.
type probe struct{ pattern string }

func (probe) Name() string { return "probe" }
func (p probe) Setup(r *skills.Router, _ skills.Config) error {
	r.Command(p.pattern, func(context.Context, *skills.Event) error { return nil })
	return nil
}

// checkPattern parses a command pattern the way the router does.
func checkPattern(pattern string) error {
	_, err := skills.NewEngine(skills.Options{Log: zerolog.Nop()}, []skills.Skill{probe{pattern}}, nil,
		[]skills.BotSpec{{ID: "@probe:invalid", Prefix: "!", Skills: []string{"probe"}, ConfigKey: "probe"}})
	if err != nil {
		if inner := errors.Unwrap(err); inner != nil {
			return inner // drop the router's "skill probe: " prefix
		}
		return err
	}
	return nil
}

// eventTypes gives the event.Type values (type and class) an events entry
// stands for. Known state types are state events, known ephemeral ones
// ephemeral; a type mautrix does not know may come either as a message
// or as a state event, so it is registered as both.
func eventTypes(t string) ([]event.Type, error) {
	if t == "" || strings.ContainsAny(t, " \t\n") {
		return nil, fmt.Errorf("%q is not an event type", t)
	}
	et := event.Type{Type: t}
	switch class := et.GuessClass(); class {
	case event.StateEventType, event.MessageEventType, event.EphemeralEventType:
		return []event.Type{{Type: t, Class: class}}, nil
	case event.AccountDataEventType, event.ToDeviceEventType:
		return nil, fmt.Errorf("%q is %s: skills only see room events", t, strings.ToLower(class.Name()))
	default:
		return []event.Type{{Type: t, Class: event.MessageEventType}, {Type: t, Class: event.StateEventType}}, nil
	}
}

// handler returns the handler of one matcher.
func (s *Skill) handler(kind, pattern string) skills.Handler {
	return func(ctx context.Context, ev *skills.Event) error {
		req, err := s.request(ctx, ev, kind, pattern)
		if err != nil {
			return err
		}
		body, err := encodeRequest(req)
		if err != nil {
			return fmt.Errorf("external skill %s: encoding the request: %w", s.c.Name, err)
		}
		status, answer, err := s.call(ctx, body, req.DeliveryID, req.Timestamp)
		if err != nil {
			return err
		}
		var actions []Action
		if status == http.StatusOK {
			actions, err = ParseAnswer(answer)
			if err != nil {
				return fmt.Errorf("external skill %s %w: %v", s.c.Name, ErrNonsense, err)
			}
		}
		return s.perform(ctx, ev, actions)
	}
}

// encodeRequest is json.Marshal without HTML escaping, so that the
// content reaches the skill as it was sent ("<" stays "<").
func encodeRequest(req *Request) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(req); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// request describes the event for the skill.
func (s *Skill) request(ctx context.Context, ev *skills.Event, kind, pattern string) (*Request, error) {
	req := &Request{
		Version:    Version,
		Skill:      s.c.Name,
		Bot:        string(ev.Bot),
		RoomID:     string(ev.RoomID),
		Timestamp:  s.now().Unix(),
		DeliveryID: skills.TxnID(string(ev.Bot), string(ev.ID), s.c.Name+"\x00"+kind+"\x00"+pattern, 0),
		Event: RequestEvent{
			EventID: string(ev.ID),
			Sender:  string(ev.Sender),
			Body:    ev.Body,
			Content: json.RawMessage("{}"),
		},
		Match: Match{Kind: kind, Pattern: pattern, Command: ev.Command, Args: ev.Args},
	}
	if req.Match.Args == nil {
		req.Match.Args = map[string]string{}
	}
	if kind == "regex" {
		req.Match.RegexGroups = ev.Match
	}
	if raw := ev.Raw; raw != nil {
		req.Event.Type = raw.Type.Type
		req.Event.StateKey = raw.StateKey
		req.Event.OriginServerTS = raw.Timestamp
		req.Event.Encrypted = raw.Mautrix.WasEncrypted
		content := raw.Content.VeryRaw
		if jsonKind(content) != "an object" || !json.Valid(content) {
			var err error
			if content, err = raw.Content.MarshalJSON(); err != nil {
				return nil, fmt.Errorf("external skill %s: encoding the event content: %w", s.c.Name, err)
			}
		}
		if jsonKind(content) == "an object" {
			req.Event.Content = content
			var fields map[string]json.RawMessage
			if json.Unmarshal(content, &fields) == nil && jsonKind(fields["m.relates_to"]) == "an object" {
				req.Event.RelatesTo = fields["m.relates_to"]
			}
		}
	}
	if ev.Memory == nil {
		req.Memory = json.RawMessage("{}")
		return req, nil
	}
	keys, err := ev.Memory.Keys(ctx)
	if err != nil {
		return nil, fmt.Errorf("external skill %s: reading memory: %w", s.c.Name, err)
	}
	memory := map[string]json.RawMessage{}
	size := 2
	for _, k := range keys {
		var v json.RawMessage
		found, err := ev.Memory.Get(ctx, k, &v)
		if err != nil {
			return nil, fmt.Errorf("external skill %s: reading memory %q: %w", s.c.Name, k, err)
		}
		if !found {
			continue
		}
		size += len(k) + len(v) + 4
		if size > MaxMemoryBytes {
			req.MemoryTruncated = true
			return req, nil
		}
		memory[k] = v
	}
	req.Memory, err = json.Marshal(memory)
	if err != nil {
		return nil, fmt.Errorf("external skill %s: encoding memory: %w", s.c.Name, err)
	}
	if len(req.Memory) > MaxMemoryBytes {
		req.Memory, req.MemoryTruncated = nil, true
	}
	return req, nil
}

// perform carries out validated actions in order; the first failure stops.
func (s *Skill) perform(ctx context.Context, ev *skills.Event, actions []Action) error {
	for i, a := range actions {
		var sent id.EventID
		var err error
		switch a.Type {
		case "reply":
			sent, err = ev.ReplyHTML(ctx, a.Text, a.HTML)
		case "respond":
			sent, err = ev.Respond(ctx, a.Text)
		case "react":
			sent, err = ev.React(ctx, a.Key)
		case "edit":
			sent, err = ev.Edit(ctx, id.EventID(a.EventID), a.Text)
		case "redact":
			_, err = ev.Redact(ctx, id.EventID(a.EventID), a.Reason)
		case "send_file":
			sent, err = ev.SendFile(ctx, a.Name, a.Mimetype, a.Data)
		case "set_memory":
			if ev.Memory == nil {
				err = errors.New("memory is not available")
			} else {
				err = ev.Memory.Put(ctx, a.Key, a.Value)
			}
		case "delete_memory":
			if ev.Memory == nil {
				err = errors.New("memory is not available")
			} else {
				err = ev.Memory.Delete(ctx, a.Key)
			}
		default: // ParseAnswer lets no other type through
			err = fmt.Errorf("unknown type %q", a.Type)
		}
		if err == nil && a.SaveIDAs != "" {
			if ev.Memory == nil {
				err = errors.New("save_id_as: memory is not available")
			} else if perr := ev.Memory.Put(ctx, a.SaveIDAs, sent); perr != nil {
				err = fmt.Errorf("save_id_as: %w", perr)
			}
		}
		if err != nil {
			return fmt.Errorf("external skill %s: actions[%d] (%s): %w", s.c.Name, i, a.Type, err)
		}
	}
	return nil
}
