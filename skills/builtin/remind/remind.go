// Package remind sets reminders: "!remind 10m check the deploy",
// "!remind 2h30m ...", "!remind 17:00 ..." or "!remind 2026-12-01 09:00 ...";
// "!remind list" and "!remind cancel <n>" manage the room's pending ones.
//
// Reminders are kept in the skill's memory outside any room (the database),
// one entry per room, so they survive restarts and fail-overs: a reminder
// that fell due while opsbot was down is delivered late, saying how late,
// and never lost. A cron job every five seconds delivers what is due. Each
// delivery's transaction ID is derived from the reminder itself, so sending
// it again after a crash (before it was crossed off) is de-duplicated by the
// homeserver.
package remind

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
)

// Settings is the skills.remind config section.
type Settings struct {
	// Timezone is the zone dates and times are read and shown in (an IANA
	// name such as Europe/Berlin).
	Timezone string `yaml:"timezone"`
	// MaxPerRoom caps the pending reminders of one room.
	MaxPerRoom int `yaml:"max_per_room"`
	// MaxLength caps a reminder's text, in characters.
	MaxLength int `yaml:"max_length"`
}

// Limits that are not settings.
const (
	// maxDelay: no reminder further ahead than a year.
	maxDelayYears = 1
	// lateAfter: a delivery this much after the due time says how late it is.
	lateAfter = time.Minute
	// giveUpAfter: a reminder that cannot be sent (the bot left the room,
	// say) is dropped once it is this overdue.
	giveUpAfter = 7 * 24 * time.Hour
	// maxRetryDelay caps the back-off between failed deliveries.
	maxRetryDelay = time.Hour
	// maxStored keeps a room's entry below the memory's 64 KiB value limit.
	maxStored = 60 << 10
	// tick is how often due reminders are looked for.
	tick = "@every 5s"
)

// Reminder is one pending reminder.
type Reminder struct {
	// ID is the event ID of the command that set it: it makes setting it
	// idempotent and seeds the delivery's transaction ID.
	ID     string     `json:"id"`
	Bot    id.UserID  `json:"bot"`
	Room   id.RoomID  `json:"room"`
	User   id.UserID  `json:"user"`
	Text   string     `json:"text"`
	Due    time.Time  `json:"due"`
	Set    time.Time  `json:"set"`
	Thread id.EventID `json:"thread,omitempty"`
	// Failures and RetryAt record failed deliveries (back-off).
	Failures int       `json:"failures,omitempty"`
	RetryAt  time.Time `json:"retry_at,omitzero"`
}

// roomEntry is what the memory keeps per room.
type roomEntry struct {
	Room      id.RoomID  `json:"room"`
	Reminders []Reminder `json:"reminders"` // sorted by due time
}

// Skill sets and delivers reminders.
type Skill struct {
	settings Settings
	loc      *time.Location
	every    string
	now      func() time.Time

	// mu serialises read-modify-write of the stored reminders.
	mu sync.Mutex
}

// New returns the remind skill.
func New() skills.Skill { return &Skill{every: tick, now: time.Now} }

// Name is the skill's config name.
func (*Skill) Name() string { return "remind" }

// Setup reads skills.remind and registers the commands and the delivery job.
func (s *Skill) Setup(r *skills.Router, cfg skills.Config) error {
	s.settings = Settings{Timezone: "UTC", MaxPerRoom: 20, MaxLength: 1000}
	if err := cfg.Decode(&s.settings); err != nil {
		return err
	}
	loc, err := time.LoadLocation(s.settings.Timezone)
	if err != nil || s.settings.Timezone == "" || strings.EqualFold(s.settings.Timezone, "Local") {
		return cfg.Errorf("timezone", "%q is not a time zone name (use an IANA name such as UTC or Europe/Berlin)", s.settings.Timezone)
	}
	s.loc = loc
	if s.settings.MaxPerRoom < 1 || s.settings.MaxPerRoom > 100 {
		return cfg.Errorf("max_per_room", "must be from 1 to 100, got %d", s.settings.MaxPerRoom)
	}
	if s.settings.MaxLength < 1 || s.settings.MaxLength > 2000 {
		return cfg.Errorf("max_length", "must be from 1 to 2000, got %d", s.settings.MaxLength)
	}
	r.Command("remind list", s.list, skills.Help("list this room's pending reminders"))
	r.Command("remind cancel {n:integer}", s.cancel, skills.Help("cancel reminder number n of !remind list"), skills.ArgHelp("n", "the reminder's number in !remind list"))
	r.Command("remind {when} {text...}", s.add, skills.Help("remind you: when is 10m, 2h30m, 1d, 17:00 or 2026-12-01 09:00"),
		skills.ArgHelp("when", "a delay (10m, 2h30m, 1d) or a time (17:00, 2026-12-01 09:00)"), skills.ArgHelp("text", "what to remind you of"))
	r.Cron(s.every, s.deliver)
	return nil
}

// memoryKey is the skill-memory key of a room's reminders.
func memoryKey(room id.RoomID) string {
	if k := "room:" + string(room); len(k) <= 255 {
		return k
	}
	sum := sha256.Sum256([]byte(room))
	return "room#" + hex.EncodeToString(sum[:])
}

func (s *Skill) load(ctx context.Context, mem skills.Memory, key string) (roomEntry, error) {
	var e roomEntry
	_, err := mem.Get(ctx, key, &e)
	return e, err
}

func (s *Skill) store(ctx context.Context, mem skills.Memory, key string, e roomEntry) error {
	if len(e.Reminders) == 0 {
		return mem.Delete(ctx, key)
	}
	return mem.Put(ctx, key, e)
}

// errNoMemory: the skill needs opsbot's memory store.
var errNoMemory = errors.New("remind: no memory store")

func (s *Skill) memory(ev *skills.Event) (skills.Memory, error) {
	mem := ev.SkillMemory()
	if mem == nil {
		return nil, errNoMemory
	}
	return mem, nil
}

// prefix is the command prefix the person used ("!").
func prefix(ev *skills.Event) string {
	if i := strings.Index(strings.ToLower(ev.Body), ev.Command); i > 0 {
		return ev.Body[:i]
	}
	return "!"
}

func (s *Skill) usage(ev *skills.Event) string {
	p := prefix(ev)
	return fmt.Sprintf("Usage: %[1]sremind <when> <text...>, where <when> is a delay (10m, 2h30m, 1d12h, at most a year) "+
		"or a time in %[2]s (17:00, or 2026-12-01 09:00) | %[1]sremind list | %[1]sremind cancel <n>", p, s.settings.Timezone)
}

var (
	durationRe = regexp.MustCompile(`(?i)^(\d{1,6}[wdhms])+$`)
	unitRe     = regexp.MustCompile(`(?i)(\d+)([wdhms])`)
	clockRe    = regexp.MustCompile(`^([01]?\d|2[0-3]):([0-5]\d)$`)
	dateRe     = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}$`)
)

// parseDelay reads "10m", "2h30m", "1d12h", "1w" (no fractions).
func parseDelay(s string) (time.Duration, bool) {
	if !durationRe.MatchString(s) {
		return 0, false
	}
	var d time.Duration
	for _, m := range unitRe.FindAllStringSubmatch(s, -1) {
		n, err := strconv.Atoi(m[1])
		if err != nil {
			return 0, false
		}
		unit := map[string]time.Duration{"w": 7 * 24 * time.Hour, "d": 24 * time.Hour, "h": time.Hour, "m": time.Minute, "s": time.Second}[strings.ToLower(m[2])]
		d += time.Duration(n) * unit
		if d > 400*24*time.Hour {
			return d, true // too far; the caller says so
		}
	}
	return d, true
}

// parseWhen reads the time of a reminder from the first argument (and, for
// a date, the next word of the text). It returns the due time and the text.
func (s *Skill) parseWhen(when, text string, now time.Time) (due time.Time, rest string, ok bool) {
	if d, isDelay := parseDelay(when); isDelay {
		return now.Add(d), text, d > 0
	}
	local := now.In(s.loc)
	if m := clockRe.FindStringSubmatch(when); m != nil {
		h, _ := strconv.Atoi(m[1])
		mi, _ := strconv.Atoi(m[2])
		due = time.Date(local.Year(), local.Month(), local.Day(), h, mi, 0, 0, s.loc)
		if !due.After(now) {
			due = time.Date(local.Year(), local.Month(), local.Day()+1, h, mi, 0, 0, s.loc)
		}
		return due, text, true
	}
	if t, err := time.ParseInLocation("2006-01-02T15:04", when, s.loc); err == nil {
		return t, text, true
	}
	if dateRe.MatchString(when) {
		clock, after, _ := strings.Cut(text, " ")
		if !clockRe.MatchString(clock) {
			return time.Time{}, "", false
		}
		if len(clock) == 4 {
			clock = "0" + clock
		}
		t, err := time.ParseInLocation("2006-01-02 15:04", when+" "+clock, s.loc)
		if err != nil {
			return time.Time{}, "", false
		}
		return t, strings.TrimSpace(after), true
	}
	return time.Time{}, "", false
}

// threadOf returns the thread the command was sent in, if any.
func threadOf(ev *skills.Event) id.EventID {
	if ev.Raw == nil {
		return ""
	}
	if msg, ok := ev.Raw.Content.Parsed.(*event.MessageEventContent); ok && msg.RelatesTo != nil && msg.RelatesTo.Type == event.RelThread {
		return msg.RelatesTo.EventID
	}
	return ""
}

func (s *Skill) add(ctx context.Context, ev *skills.Event) error {
	now := s.now()
	due, text, ok := s.parseWhen(ev.Arg("when"), ev.Arg("text"), now)
	if !ok || text == "" {
		_, err := ev.Reply(ctx, s.usage(ev))
		return err
	}
	if !due.After(now) {
		_, err := ev.Reply(ctx, fmt.Sprintf("%s is in the past; give a time in the future.", s.formatTime(due)))
		return err
	}
	if due.After(now.AddDate(maxDelayYears, 0, 0)) {
		_, err := ev.Reply(ctx, "I can only remind you of things up to a year ahead.")
		return err
	}
	if utf8.RuneCountInString(text) > s.settings.MaxLength {
		_, err := ev.Reply(ctx, fmt.Sprintf("A reminder can be at most %d characters.", s.settings.MaxLength))
		return err
	}
	r := Reminder{ID: string(ev.ID), Bot: ev.Bot, Room: ev.RoomID, User: ev.Sender, Text: text,
		Due: due.UTC(), Set: now.UTC(), Thread: threadOf(ev)}
	return s.changeRoom(ctx, ev, func(e *roomEntry) (string, bool) {
		e.Room = ev.RoomID
		done := fmt.Sprintf("⏰ I will remind you in %s, at %s.", formatDuration(due.Sub(now)), s.formatTime(due))
		// The same command handled again (after a crash) sets nothing new.
		if slices.ContainsFunc(e.Reminders, func(x Reminder) bool { return x.ID == r.ID }) {
			return done, false
		}
		if len(e.Reminders) >= s.settings.MaxPerRoom {
			return fmt.Sprintf("This room already has %d pending reminders; cancel some first.", len(e.Reminders)), false
		}
		e.Reminders = append(e.Reminders, r)
		sortByDue(e.Reminders)
		if data, _ := json.Marshal(e); len(data) > maxStored {
			return "This room's reminders are too long to store; cancel some first.", false
		}
		return done, true
	})
}

// changeRoom changes the room's reminders under the lock, stores them if
// change says so, and replies with what it returned.
func (s *Skill) changeRoom(ctx context.Context, ev *skills.Event, change func(*roomEntry) (reply string, save bool)) error {
	mem, err := s.memory(ev)
	if err != nil {
		return err
	}
	key := memoryKey(ev.RoomID)
	s.mu.Lock()
	reply, err := func() (string, error) {
		defer s.mu.Unlock()
		e, err := s.load(ctx, mem, key)
		if err != nil {
			return "", err
		}
		reply, save := change(&e)
		if save {
			if err := s.store(ctx, mem, key, e); err != nil {
				return "", err
			}
		}
		return reply, nil
	}()
	if err != nil {
		return err
	}
	_, err = ev.Reply(ctx, reply)
	return err
}

func sortByDue(rs []Reminder) {
	slices.SortStableFunc(rs, func(a, b Reminder) int { return a.Due.Compare(b.Due) })
}

func (s *Skill) list(ctx context.Context, ev *skills.Event) error {
	mem, err := s.memory(ev)
	if err != nil {
		return err
	}
	s.mu.Lock()
	e, err := s.load(ctx, mem, memoryKey(ev.RoomID))
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if len(e.Reminders) == 0 {
		_, err := ev.Reply(ctx, "No reminders pending in this room.")
		return err
	}
	now := s.now()
	var b strings.Builder
	for i, r := range e.Reminders {
		when := "due now"
		if r.Due.After(now) {
			when = "in " + formatDuration(r.Due.Sub(now))
		}
		fmt.Fprintf(&b, "%d. %s (%s) for %s: %s\n", i+1, s.formatTime(r.Due), when, r.User, r.Text)
	}
	_, err = ev.Reply(ctx, strings.TrimRight(b.String(), "\n"))
	return err
}

func (s *Skill) cancel(ctx context.Context, ev *skills.Event) error {
	return s.changeRoom(ctx, ev, func(e *roomEntry) (string, bool) {
		n, err := strconv.Atoi(ev.Arg("n"))
		if err != nil || n < 1 || n > len(e.Reminders) {
			return fmt.Sprintf("There is no reminder %q; %sremind list shows their numbers.", ev.Arg("n"), prefix(ev)), false
		}
		gone := e.Reminders[n-1]
		e.Reminders = slices.Delete(e.Reminders, n-1, n)
		return fmt.Sprintf("Cancelled reminder %d (%s): %s", n, s.formatTime(gone.Due), gone.Text), true
	})
}

// deliver is the cron job: it sends every due reminder and crosses it off.
func (s *Skill) deliver(ctx context.Context, ev *skills.Event) error {
	mem, err := s.memory(ev)
	if err != nil {
		return err
	}
	base := *ev // a pristine copy: each delivery gets its own trigger
	return s.deliverDue(ctx, mem, s.now(), func(ctx context.Context, r Reminder, plain, html string) error {
		dev := base
		// The transaction ID comes from the reminder, not from the cron
		// run: a reminder sent again after a crash is de-duplicated.
		dev.ID = id.EventID("remind:" + r.ID)
		if r.Bot != "" {
			dev.Bot = r.Bot // the bot that was asked, which is in the room
		}
		var err error
		if r.Thread != "" {
			_, err = dev.SendThreadTo(ctx, r.Room, r.Thread, plain, html)
		} else {
			_, err = dev.SendHTMLTo(ctx, r.Room, plain, html)
		}
		return err
	})
}

// sendFunc sends one reminder's message.
type sendFunc func(ctx context.Context, r Reminder, plain, html string) error

// deliverDue sends the reminders due at now, oldest first, crossing each
// off as soon as it is sent. A failed send is retried with back-off and
// given up after giveUpAfter.
func (s *Skill) deliverDue(ctx context.Context, mem skills.Memory, now time.Time, send sendFunc) error {
	log := zerolog.Ctx(ctx)
	keys, err := mem.Keys(ctx)
	if err != nil {
		return err
	}
	for _, key := range keys {
		if !strings.HasPrefix(key, "room") {
			continue
		}
		s.mu.Lock()
		e, err := s.load(ctx, mem, key)
		s.mu.Unlock()
		if err != nil {
			return err
		}
		for _, r := range e.Reminders {
			if r.Due.After(now) {
				break // sorted by due time
			}
			if r.RetryAt.After(now) {
				continue
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			plain, html := s.message(r, now)
			sendErr := send(ctx, r, plain, html)
			if sendErr != nil {
				log.Warn().Err(sendErr).Stringer("room_id", r.Room).Str("reminder", r.ID).Int("failures", r.Failures+1).Msg("Could not deliver a reminder")
			}
			if err := s.update(ctx, mem, key, r.ID, func(x *Reminder) (keep bool) {
				if sendErr == nil {
					return false
				}
				if now.Sub(x.Due) > giveUpAfter {
					log.Error().Stringer("room_id", x.Room).Str("reminder", x.ID).Msg("Giving up on a reminder that could not be delivered for a week")
					return false
				}
				x.Failures++
				x.RetryAt = now.Add(min(5*time.Second<<min(x.Failures, 20), maxRetryDelay))
				return true
			}); err != nil {
				return err
			}
		}
	}
	return nil
}

// update changes or removes (keep=false) one stored reminder.
func (s *Skill) update(ctx context.Context, mem skills.Memory, key, reminderID string, f func(*Reminder) (keep bool)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, err := s.load(ctx, mem, key)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(e.Reminders, func(x Reminder) bool { return x.ID == reminderID })
	if i < 0 {
		return nil // cancelled meanwhile
	}
	if !f(&e.Reminders[i]) {
		e.Reminders = slices.Delete(e.Reminders, i, i+1)
	}
	return s.store(ctx, mem, key, e)
}

// message is the text of a delivered reminder, mentioning who set it.
func (s *Skill) message(r Reminder, now time.Time) (plain, htmlBody string) {
	late := ""
	if d := now.Sub(r.Due); d > lateAfter {
		late = " (late by " + formatDuration(d) + ")"
	}
	plain = fmt.Sprintf("⏰ %s: %s%s", r.User, r.Text, late)
	htmlBody = fmt.Sprintf(`⏰ <a href="https://matrix.to/#/%s">%s</a>: %s%s`,
		html.EscapeString(string(r.User)), html.EscapeString(string(r.User)), html.EscapeString(r.Text), late)
	return plain, htmlBody
}

func (s *Skill) formatTime(t time.Time) string {
	return t.In(s.loc).Format("2006-01-02 15:04 MST")
}

// formatDuration shows a duration with its two largest units: 3h, 2h30m,
// 1d2h, 45s.
func formatDuration(d time.Duration) string {
	d = d.Round(time.Second)
	if d < time.Second {
		return "0s"
	}
	units := []struct {
		name string
		size time.Duration
	}{{"d", 24 * time.Hour}, {"h", time.Hour}, {"m", time.Minute}, {"s", time.Second}}
	var parts []string
	for _, u := range units {
		if n := d / u.size; n > 0 {
			parts = append(parts, fmt.Sprintf("%d%s", n, u.name))
			d -= n * u.size
		} else if len(parts) > 0 {
			break
		}
		if len(parts) == 2 {
			break
		}
	}
	return strings.Join(parts, "")
}
