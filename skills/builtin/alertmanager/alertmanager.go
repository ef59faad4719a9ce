// Package alertmanager receives Prometheus Alertmanager notifications (the
// webhook receiver's JSON, version 4) at /skills/alertmanager/alerts and
// posts one message per alert group into the configured rooms. Later
// notifications of the same group update that message; when the group
// resolves, the bot edits it, answers in a thread under it, or posts anew
// (setting resolved).
package alertmanager

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
)

// Settings is the skills.alertmanager config section.
type Settings struct {
	// Rooms are the rooms (IDs) every notification is posted into.
	Rooms []string `yaml:"rooms"`
	// Token, sent by Alertmanager as "Authorization: Bearer <token>"
	// (http_config.authorization.credentials), and/or HMACSecret, an
	// HMAC-SHA256 signature of the body in HMACHeader ("sha256=<hex>").
	Token      string `yaml:"token"`
	HMACSecret string `yaml:"hmac_secret"`
	HMACHeader string `yaml:"hmac_header"`
	// Resolved says what happens when a group resolves: edit its message,
	// answer in a thread under it, or post a new message.
	Resolved string `yaml:"resolved"`
	// MaxAlerts caps the alerts listed in one message.
	MaxAlerts int `yaml:"max_alerts"`
}

// Environment variables that override the secrets (skills.EnvName's rule).
const (
	EnvToken      = "OPSBOT_SKILL_ALERTMANAGER_TOKEN"
	EnvHMACSecret = "OPSBOT_SKILL_ALERTMANAGER_HMAC_SECRET"
)

// EnvOverrides lets the secrets come from the environment; cfg.Decode
// applies them.
func (s *Settings) EnvOverrides() []skills.EnvOverride {
	return []skills.EnvOverride{
		{Name: EnvToken, Apply: func(v string) { s.Token = v }},
		{Name: EnvHMACSecret, Apply: func(v string) { s.HMACSecret = v }},
	}
}

const (
	// staleAfter: a group not heard of for this long is forgotten; its next
	// notification gets a new message.
	staleAfter = 7 * 24 * time.Hour
	// maxText caps one annotation in a message, in characters.
	maxText     = 500
	groupPrefix = "group:"
)

// Skill posts Alertmanager notifications.
type Skill struct {
	settings Settings
	rooms    []id.RoomID
	now      func() time.Time

	// mu serialises notifications, so that a group's messages are
	// updated in the order Alertmanager sent them.
	mu sync.Mutex
}

// New returns the alertmanager skill.
func New() skills.Skill { return &Skill{now: time.Now} }

// Name is the skill's config name.
func (*Skill) Name() string { return "alertmanager" }

// Setup reads skills.alertmanager and registers the webhook.
func (s *Skill) Setup(r *skills.Router, cfg skills.Config) error {
	s.settings = Settings{Resolved: "edit", HMACHeader: "X-Hub-Signature-256", MaxAlerts: 10}
	if err := cfg.Decode(&s.settings); err != nil {
		return err
	}
	if len(s.settings.Rooms) == 0 {
		return cfg.Errorf("rooms", "required: the IDs of the rooms to post alerts into, e.g. [\"!abc:example.org\"]")
	}
	s.rooms = nil
	for i, room := range s.settings.Rooms {
		if !strings.HasPrefix(room, "!") || len(room) > 255 || strings.ContainsAny(room, " \t\n") {
			return cfg.Errorf(fmt.Sprintf("rooms[%d]", i), "%q is not a room ID (like !abc:example.org; aliases are not accepted)", room)
		}
		if slices.Contains(s.rooms, id.RoomID(room)) {
			return cfg.Errorf(fmt.Sprintf("rooms[%d]", i), "%s is listed twice", room)
		}
		s.rooms = append(s.rooms, id.RoomID(room))
	}
	if s.settings.Token == "" && s.settings.HMACSecret == "" {
		return cfg.Errorf("token", "set token and/or hmac_secret (or %s / %s): the webhook must be authenticated", EnvToken, EnvHMACSecret)
	}
	if s.settings.Token != "" && len(s.settings.Token) < 16 {
		return cfg.Errorf("token", "must be at least 16 characters")
	}
	if s.settings.HMACSecret != "" && len(s.settings.HMACSecret) < 16 {
		return cfg.Errorf("hmac_secret", "must be at least 16 characters")
	}
	if s.settings.HMACHeader == "" {
		return cfg.Errorf("hmac_header", "must not be empty")
	}
	switch s.settings.Resolved {
	case "edit", "thread", "new":
	default:
		return cfg.Errorf("resolved", "%q must be edit, thread or new", s.settings.Resolved)
	}
	if s.settings.MaxAlerts < 1 || s.settings.MaxAlerts > 100 {
		return cfg.Errorf("max_alerts", "must be from 1 to 100, got %d", s.settings.MaxAlerts)
	}
	var opts []skills.Option
	if s.settings.Token != "" {
		opts = append(opts, skills.WithToken(s.settings.Token))
	}
	if s.settings.HMACSecret != "" {
		// Alertmanager repeats a notification unchanged (repeat_interval);
		// an identical one changes nothing here, so it is not a replay.
		opts = append(opts, skills.WithHMAC(s.settings.HMACSecret, s.settings.HMACHeader), skills.RepeatsAreSafe())
	}
	r.Webhook("/alerts", s.onAlert, opts...)
	r.Cron("@daily", s.prune)
	return nil
}

// Payload is Alertmanager's webhook notification (version 4).
type Payload struct {
	Version           string            `json:"version"`
	GroupKey          string            `json:"groupKey"`
	TruncatedAlerts   int               `json:"truncatedAlerts"`
	Status            string            `json:"status"`
	Receiver          string            `json:"receiver"`
	GroupLabels       map[string]string `json:"groupLabels"`
	CommonLabels      map[string]string `json:"commonLabels"`
	CommonAnnotations map[string]string `json:"commonAnnotations"`
	ExternalURL       string            `json:"externalURL"`
	Alerts            []Alert           `json:"alerts"`
}

// Alert is one alert of a notification.
type Alert struct {
	Status       string            `json:"status"`
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       time.Time         `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL"`
	Fingerprint  string            `json:"fingerprint"`
}

// Parse decodes and checks a notification.
func Parse(body []byte) (*Payload, error) {
	var p Payload
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("not an Alertmanager notification: %w", err)
	}
	if p.Version != "4" {
		return nil, fmt.Errorf("unsupported notification version %q (want \"4\")", p.Version)
	}
	if p.GroupKey == "" {
		return nil, errors.New("notification without groupKey")
	}
	if p.Status != "firing" && p.Status != "resolved" {
		return nil, fmt.Errorf("notification status %q is neither firing nor resolved", p.Status)
	}
	if len(p.Alerts) == 0 {
		return nil, errors.New("notification without alerts")
	}
	for i, a := range p.Alerts {
		if a.Status != "firing" && a.Status != "resolved" {
			return nil, fmt.Errorf("alerts[%d]: status %q is neither firing nor resolved", i, a.Status)
		}
	}
	if p.TruncatedAlerts < 0 {
		return nil, errors.New("negative truncatedAlerts")
	}
	return &p, nil
}

// groupState is what the memory keeps per alert group.
type groupState struct {
	GroupKey string                `json:"group_key"`
	Messages map[id.RoomID]message `json:"messages"`
	Updated  time.Time             `json:"updated"`
}

// message is the bot's message about a group in one room.
type message struct {
	EventID id.EventID `json:"event_id"`
	// Hash of what it says now, to skip edits that change nothing
	// (Alertmanager repeats unchanged groups every repeat_interval).
	Hash string `json:"hash"`
	// Resolved: the resolution has been posted in this room.
	Resolved bool `json:"resolved,omitempty"`
}

func groupMemoryKey(groupKey string) string {
	sum := sha256.Sum256([]byte(groupKey))
	return groupPrefix + hex.EncodeToString(sum[:16])
}

func (s *Skill) onAlert(ctx context.Context, ev *skills.Event, req *skills.WebhookRequest) error {
	p, err := Parse(req.Body)
	if err != nil {
		return err
	}
	mem := ev.SkillMemory()
	if mem == nil {
		return errors.New("alertmanager: no memory store")
	}
	plain, htmlBody := Render(p, s.settings.MaxAlerts)
	sum := sha256.Sum256([]byte(plain + "\x00" + htmlBody))
	hash := hex.EncodeToString(sum[:8])
	now := s.now()

	s.mu.Lock()
	defer s.mu.Unlock()
	key := groupMemoryKey(p.GroupKey)
	var st groupState
	if _, err := mem.Get(ctx, key, &st); err != nil {
		return err
	}
	if st.GroupKey != p.GroupKey || now.Sub(st.Updated) > staleAfter || st.Messages == nil {
		st = groupState{GroupKey: p.GroupKey, Messages: map[id.RoomID]message{}}
	}
	st.Updated = now.UTC()
	log := zerolog.Ctx(ctx)
	var errs []error
	for _, room := range s.rooms {
		// Each room's action gets a transaction ID of its own, derived
		// from the notification: a notification retried after a failure
		// in another room does not post twice here.
		rev := *ev
		rev.ID = id.EventID(string(ev.ID) + "|" + string(room))
		prev, known := st.Messages[room]
		if known && prev.Resolved && p.Status == "firing" {
			known = false // fired again after resolving: a new message
		}
		var sent id.EventID
		var err error
		switch {
		case known && prev.Resolved:
			continue // the resolution is posted already (a retry)
		case known && prev.Hash == hash:
			continue // nothing changed
		case !known:
			sent, err = rev.SendHTMLTo(ctx, room, plain, htmlBody)
		case p.Status == "firing" || s.settings.Resolved == "edit":
			_, err = rev.EditIn(ctx, room, prev.EventID, plain, htmlBody)
			sent = prev.EventID
		case s.settings.Resolved == "thread":
			_, err = rev.SendThreadTo(ctx, room, prev.EventID, plain, htmlBody)
			sent = prev.EventID
		default: // new
			_, err = rev.SendHTMLTo(ctx, room, plain, htmlBody)
			sent = prev.EventID
		}
		if err != nil {
			log.Warn().Err(err).Stringer("room_id", room).Msg("Could not post an Alertmanager notification")
			errs = append(errs, fmt.Errorf("room %s: %w", room, err))
			continue
		}
		st.Messages[room] = message{EventID: sent, Hash: hash, Resolved: p.Status == "resolved"}
	}
	allResolved := p.Status == "resolved"
	for _, room := range s.rooms {
		allResolved = allResolved && st.Messages[room].Resolved
	}
	if allResolved {
		err = mem.Delete(ctx, key) // done with this group
	} else {
		err = mem.Put(ctx, key, st)
	}
	return errors.Join(append(errs, err)...)
}

// prune forgets groups not heard of for a week (those that never resolve,
// with send_resolved: false).
func (s *Skill) prune(ctx context.Context, ev *skills.Event) error {
	mem := ev.SkillMemory()
	if mem == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	keys, err := mem.Keys(ctx)
	if err != nil {
		return err
	}
	now := s.now()
	for _, key := range keys {
		if !strings.HasPrefix(key, groupPrefix) {
			continue
		}
		var st groupState
		if _, err := mem.Get(ctx, key, &st); err != nil || now.Sub(st.Updated) > staleAfter {
			if err := mem.Delete(ctx, key); err != nil {
				return err
			}
		}
	}
	return nil
}

// Render formats a notification as plain text and HTML: status, alert
// name, severity, count, the common summary and description, up to
// maxAlerts alerts with what sets them apart, and a link to Alertmanager.
func Render(p *Payload, maxAlerts int) (plain, htmlBody string) {
	firing, resolved := 0, 0
	for _, a := range p.Alerts {
		if a.Status == "firing" {
			firing++
		} else {
			resolved++
		}
	}
	var firstName string
	if len(p.Alerts) > 0 {
		firstName = p.Alerts[0].Labels["alertname"]
	}
	name := first(p.GroupLabels["alertname"], p.CommonLabels["alertname"], firstName, "Alerts")
	severity := p.CommonLabels["severity"]
	emoji, status := "🔥", "FIRING"
	if p.Status == "resolved" {
		emoji, status = "✅", "RESOLVED"
	}
	total := len(p.Alerts) + p.TruncatedAlerts
	count := plural(total, "alert")
	if firing > 0 && resolved > 0 {
		count = fmt.Sprintf("%d firing, %d resolved", firing+p.TruncatedAlerts, resolved)
	}
	var pb, hb strings.Builder
	fmt.Fprintf(&pb, "%s %s: %s", emoji, status, name)
	fmt.Fprintf(&hb, "<p>%s <strong>%s: %s</strong>", emoji, status, esc(name))
	if severity != "" {
		fmt.Fprintf(&pb, " (%s)", severity)
		fmt.Fprintf(&hb, " (severity <code>%s</code>)", esc(severity))
	}
	fmt.Fprintf(&pb, ", %s", count)
	fmt.Fprintf(&hb, ", %s</p>", esc(count))

	summary := clip(p.CommonAnnotations["summary"])
	description := clip(p.CommonAnnotations["description"])
	if summary != "" || description != "" {
		var lines []string
		for _, l := range []string{summary, description} {
			if l != "" {
				lines = append(lines, l)
			}
		}
		pb.WriteString("\n" + strings.Join(lines, "\n"))
		for i := range lines {
			lines[i] = esc(lines[i])
		}
		hb.WriteString("<p>" + strings.Join(lines, "<br>") + "</p>")
	}

	// List the alerts when there are several, or when the one alert says
	// more than the common annotations.
	if len(p.Alerts) > 1 || (summary == "" && description == "") {
		hb.WriteString("<ul>")
		for i, a := range p.Alerts {
			if i == maxAlerts {
				more := len(p.Alerts) - maxAlerts + p.TruncatedAlerts
				fmt.Fprintf(&pb, "\n… and %d more", more)
				fmt.Fprintf(&hb, "<li>… and %d more</li>", more)
				break
			}
			who := distinct(a.Labels, p.CommonLabels)
			what := clip(first(differs(a.Annotations["summary"], summary), differs(a.Annotations["description"], description)))
			mark := "🔥"
			if a.Status == "resolved" {
				mark = "✅"
			}
			line := strings.TrimSpace(strings.Join(nonEmpty(who, what), ": "))
			if line == "" {
				line = name
			}
			fmt.Fprintf(&pb, "\n%s %s", mark, line)
			fmt.Fprintf(&hb, "<li>%s ", mark)
			if who != "" {
				fmt.Fprintf(&hb, "<code>%s</code>", esc(who))
				if what != "" {
					hb.WriteString(": ")
				}
			}
			hb.WriteString(esc(what))
			if who == "" && what == "" {
				hb.WriteString(esc(name))
			}
			if u := httpURL(a.GeneratorURL); u != "" {
				fmt.Fprintf(&hb, ` (<a href="%s">source</a>)`, esc(u))
			}
			hb.WriteString("</li>")
		}
		if len(p.Alerts) <= maxAlerts && p.TruncatedAlerts > 0 {
			fmt.Fprintf(&pb, "\n… and %d more", p.TruncatedAlerts)
			fmt.Fprintf(&hb, "<li>… and %d more</li>", p.TruncatedAlerts)
		}
		hb.WriteString("</ul>")
	}
	if u := httpURL(p.ExternalURL); u != "" {
		fmt.Fprintf(&pb, "\nAlertmanager: %s", u)
		fmt.Fprintf(&hb, `<p><a href="%s">Alertmanager</a></p>`, esc(u))
	}
	return pb.String(), hb.String()
}

// distinct formats the labels of an alert that the group does not share
// ("instance=api-1, job=api"), alertname and severity aside.
func distinct(labels, common map[string]string) string {
	var keys []string
	for k, v := range labels {
		if k == "alertname" || k == "severity" || common[k] == v {
			continue
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + labels[k]
	}
	return clip(strings.Join(parts, ", "))
}

func first(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}

func differs(v, common string) string {
	if v == common {
		return ""
	}
	return v
}

func nonEmpty(values ...string) []string {
	var out []string
	for _, v := range values {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// clip shortens text to maxText characters, on one line.
func clip(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) <= maxText {
		return s
	}
	r := []rune(s)
	return string(r[:maxText-1]) + "…"
}

func esc(s string) string { return html.EscapeString(s) }

// httpURL returns u if it is an http(s) URL, else "" (no javascript: links).
func httpURL(u string) string {
	parsed, err := url.Parse(u)
	if err != nil || (parsed.Scheme != "http" && parsed.Scheme != "https") || parsed.Host == "" {
		return ""
	}
	return u
}
