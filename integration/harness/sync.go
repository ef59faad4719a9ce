package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Event is one room event as a client receives it from /sync.
type Event struct {
	Type           string         `json:"type"`
	Sender         string         `json:"sender"`
	EventID        string         `json:"event_id"` // empty for invite_state events
	RoomID         string         `json:"room_id"`  // filled in from the /sync room key
	StateKey       *string        `json:"state_key,omitempty"`
	Content        map[string]any `json:"content"`
	OriginServerTS int64          `json:"origin_server_ts"`
	Redacts        string         `json:"redacts,omitempty"`
	Unsigned       map[string]any `json:"unsigned,omitempty"`
	// Section is the /sync section the event came in: "join" and "leave"
	// (timeline events) or "invite" (stripped invite_state events).
	Section string `json:"-"`
	// Raw is the event exactly as received.
	Raw json.RawMessage `json:"-"`
}

// Body returns content.body, or "".
func (e Event) Body() string { s, _ := e.Content["body"].(string); return s }

// MsgType returns content.msgtype, or "".
func (e Event) MsgType() string { s, _ := e.Content["msgtype"].(string); return s }

// Membership returns content.membership (for m.room.member), or "".
func (e Event) Membership() string { s, _ := e.Content["membership"].(string); return s }

// String is a one-line summary for test failure messages.
func (e Event) String() string {
	s := e.Type + " from " + e.Sender
	if e.StateKey != nil {
		s += fmt.Sprintf(" state_key=%q", *e.StateKey)
	}
	if m := e.Membership(); m != "" {
		s += " membership=" + m
	}
	if b := e.Body(); b != "" {
		if len(b) > 120 {
			b = b[:120] + "..."
		}
		s += fmt.Sprintf(" body=%q", b)
	}
	if e.EventID != "" {
		s += " (" + e.EventID + ")"
	}
	return s
}

// Predicate selects events for the wait helpers; nil matches every event.
type Predicate func(Event) bool

// From matches events sent by sender.
func From(sender string) Predicate { return func(e Event) bool { return e.Sender == sender } }

// OfType matches events of type typ.
func OfType(typ string) Predicate { return func(e Event) bool { return e.Type == typ } }

// BodyIs matches events whose content.body equals body.
func BodyIs(body string) Predicate { return func(e Event) bool { return e.Body() == body } }

// BodyContains matches events whose content.body contains s.
func BodyContains(s string) Predicate {
	return func(e Event) bool { return strings.Contains(e.Body(), s) }
}

// All matches events that every one of preds matches.
func All(preds ...Predicate) Predicate {
	return func(e Event) bool {
		for _, p := range preds {
			if p != nil && !p(e) {
				return false
			}
		}
		return true
	}
}

const (
	// maxPoll is the longest single /sync long-poll of a wait.
	maxPoll = 5 * time.Second
	// syncFilter keeps whole timelines (no gaps) for any realistic test.
	syncFilter = `{"room":{"timeline":{"limit":500}}}`
	// initialFilter makes the first /sync, whose events are dropped, cheap.
	initialFilter = `{"room":{"timeline":{"limit":1}}}`
	recentKept    = 100
)

type syncState struct {
	mu      sync.Mutex
	since   string
	pending []Event             // fetched, not yet consumed by a wait, in arrival order
	recent  []Event             // the last recentKept events fetched, for failure messages
	seen    map[string]struct{} // event IDs fetched, to drop repeats
}

// initialSync sets u's /sync position to now without keeping any events.
func (u *User) initialSync(ctx context.Context) error {
	u.sync.mu.Lock()
	defer u.sync.mu.Unlock()
	return u.initialSyncLocked(ctx)
}

func (u *User) initialSyncLocked(ctx context.Context) error {
	var res syncResponse
	q := url.Values{"timeout": {"0"}, "filter": {initialFilter}}
	if err := u.Do(ctx, http.MethodGet, "/_matrix/client/v3/sync?"+q.Encode(), nil, &res); err != nil {
		return err
	}
	u.sync.since = res.NextBatch
	return nil
}

type syncTimeline struct {
	Timeline struct {
		Events  []json.RawMessage `json:"events"`
		Limited bool              `json:"limited"`
	} `json:"timeline"`
}

type syncResponse struct {
	NextBatch string `json:"next_batch"`
	Rooms     struct {
		Join   map[string]syncTimeline `json:"join"`
		Leave  map[string]syncTimeline `json:"leave"`
		Invite map[string]struct {
			InviteState struct {
				Events []json.RawMessage `json:"events"`
			} `json:"invite_state"`
		} `json:"invite"`
	} `json:"rooms"`
}

// syncOnceLocked long-polls /sync for up to poll and buffers what arrives.
func (u *User) syncOnceLocked(ctx context.Context, poll time.Duration) error {
	if u.sync.since == "" {
		if err := u.initialSyncLocked(ctx); err != nil {
			return err
		}
	}
	q := url.Values{
		"since":   {u.sync.since},
		"timeout": {strconv.FormatInt(poll.Milliseconds(), 10)},
		"filter":  {syncFilter},
	}
	var res syncResponse
	if err := u.Do(ctx, http.MethodGet, "/_matrix/client/v3/sync?"+q.Encode(), nil, &res); err != nil {
		return err
	}
	if u.sync.seen == nil {
		u.sync.seen = map[string]struct{}{}
	}
	add := func(roomID, section string, raws []json.RawMessage) error {
		for _, raw := range raws {
			var ev Event
			if err := json.Unmarshal(raw, &ev); err != nil {
				return fmt.Errorf("sync: bad event in %s: %w", roomID, err)
			}
			if ev.EventID != "" {
				if _, dup := u.sync.seen[ev.EventID]; dup {
					continue
				}
				u.sync.seen[ev.EventID] = struct{}{}
			}
			ev.RoomID, ev.Section, ev.Raw = roomID, section, raw
			u.sync.pending = append(u.sync.pending, ev)
			u.sync.recent = append(u.sync.recent, ev)
		}
		return nil
	}
	for _, id := range sortedKeys(res.Rooms.Join) {
		if err := add(id, "join", res.Rooms.Join[id].Timeline.Events); err != nil {
			return err
		}
	}
	for _, id := range sortedKeys(res.Rooms.Leave) {
		if err := add(id, "leave", res.Rooms.Leave[id].Timeline.Events); err != nil {
			return err
		}
	}
	for _, id := range sortedKeys(res.Rooms.Invite) {
		if err := add(id, "invite", res.Rooms.Invite[id].InviteState.Events); err != nil {
			return err
		}
	}
	if n := len(u.sync.recent); n > recentKept {
		u.sync.recent = slices.Clone(u.sync.recent[n-recentKept:])
	}
	if res.NextBatch != "" {
		u.sync.since = res.NextBatch
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// takeLocked removes and returns the first buffered event in roomID ("" for
// any room) that pred matches, dropping the earlier events of its room too.
func (u *User) takeLocked(roomID string, pred Predicate) (Event, bool) {
	for i, ev := range u.sync.pending {
		if (roomID == "" || ev.RoomID == roomID) && (pred == nil || pred(ev)) {
			kept := u.sync.pending[:0:0]
			for j, other := range u.sync.pending {
				if j > i || other.RoomID != ev.RoomID {
					kept = append(kept, other)
				}
			}
			u.sync.pending = kept
			return ev, true
		}
	}
	return Event{}, false
}

// WaitForEvent returns the first event in roomID ("" for any room) that pred
// matches (nil matches any) and that u has not consumed yet, syncing for up
// to timeout; it fails the test if none comes.
//
// Consumption: the returned event and every earlier event of the same room
// are consumed, so consecutive waits on a room see only events after the
// previous match, in order. Events of other rooms stay buffered for later
// waits. Events are never missed between calls: the /sync position is kept
// per user.
func (u *User) WaitForEvent(t testing.TB, roomID string, timeout time.Duration, pred Predicate) Event {
	t.Helper()
	u.sync.mu.Lock()
	defer u.sync.mu.Unlock()
	deadline := time.Now().Add(timeout)
	for {
		if ev, ok := u.takeLocked(roomID, pred); ok {
			return ev
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			t.Fatalf("harness: %s: no matching event in room %q within %s\n%s", u.ID, roomID, timeout, u.describeLocked(roomID))
		}
		if err := u.pollLocked(t, min(remaining, maxPoll)); err != nil {
			t.Fatalf("harness: %s: sync: %v", u.ID, err)
		}
	}
}

// AwaitEvent is WaitForEvent for programs that are not tests: it waits
// until ctx is done instead of a timeout, and returns an error (describing
// the events it did see) instead of failing a test. It consumes events the
// same way.
func (u *User) AwaitEvent(ctx context.Context, roomID string, pred Predicate) (Event, error) {
	u.sync.mu.Lock()
	defer u.sync.mu.Unlock()
	for {
		if ev, ok := u.takeLocked(roomID, pred); ok {
			return ev, nil
		}
		poll := maxPoll
		if deadline, ok := ctx.Deadline(); ok {
			poll = min(time.Until(deadline), maxPoll)
		}
		if ctx.Err() != nil || poll <= 0 {
			cause := ctx.Err()
			if cause == nil {
				cause = context.DeadlineExceeded
			}
			return Event{}, fmt.Errorf("%s: no matching event in room %q: %w\n%s", u.ID, roomID, cause, u.describeLocked(roomID))
		}
		pctx, cancel := context.WithTimeout(ctx, poll+RequestTimeout)
		err := u.syncOnceLocked(pctx, poll)
		cancel()
		if err != nil && ctx.Err() == nil {
			return Event{}, fmt.Errorf("%s: sync: %w", u.ID, err)
		}
	}
}

func (u *User) pollLocked(t testing.TB, poll time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), poll+RequestTimeout)
	defer cancel()
	return u.syncOnceLocked(ctx, poll)
}

// WaitForMessage is WaitForEvent restricted to m.room.message events.
func (u *User) WaitForMessage(t testing.TB, roomID string, timeout time.Duration, pred Predicate) Event {
	t.Helper()
	return u.WaitForEvent(t, roomID, timeout, All(OfType("m.room.message"), pred))
}

// WaitForInvite waits until u is invited to a room and returns the room's ID.
func (u *User) WaitForInvite(t testing.TB, timeout time.Duration) string {
	t.Helper()
	ev := u.WaitForEvent(t, "", timeout, func(e Event) bool {
		return e.Section == "invite" && e.Type == "m.room.member" &&
			e.StateKey != nil && *e.StateKey == u.ID && e.Membership() == "invite"
	})
	return ev.RoomID
}

// Collect syncs for d and returns the not yet consumed events of roomID (""
// for all rooms) that pred matches, in order. Every event of that room (or
// all rooms) fetched by then is consumed, matching or not.
func (u *User) Collect(t testing.TB, roomID string, d time.Duration, pred Predicate) []Event {
	t.Helper()
	u.sync.mu.Lock()
	defer u.sync.mu.Unlock()
	deadline := time.Now().Add(d)
	for {
		remaining := time.Until(deadline)
		if remaining <= 0 {
			break
		}
		if err := u.pollLocked(t, min(remaining, maxPoll)); err != nil {
			t.Fatalf("harness: %s: sync: %v", u.ID, err)
		}
	}
	var matched []Event
	kept := u.sync.pending[:0:0]
	for _, ev := range u.sync.pending {
		if roomID != "" && ev.RoomID != roomID {
			kept = append(kept, ev)
			continue
		}
		if pred == nil || pred(ev) {
			matched = append(matched, ev)
		}
	}
	u.sync.pending = kept
	return matched
}

// ExpectNoEvent fails the test if an event in roomID ("" for any room) that
// pred matches arrives within d (or had arrived unconsumed before). Like
// Collect, it consumes the room's events.
func (u *User) ExpectNoEvent(t testing.TB, roomID string, d time.Duration, pred Predicate) {
	t.Helper()
	if evs := u.Collect(t, roomID, d, pred); len(evs) > 0 {
		lines := make([]string, len(evs))
		for i, ev := range evs {
			lines[i] = "  " + ev.String()
		}
		t.Fatalf("harness: %s: expected no matching event in room %q within %s, got:\n%s", u.ID, roomID, d, strings.Join(lines, "\n"))
	}
}

// describeLocked lists recently fetched events of roomID for failure messages.
func (u *User) describeLocked(roomID string) string {
	var lines []string
	for _, ev := range u.sync.recent {
		if roomID == "" || ev.RoomID == roomID {
			where := ev.Section
			if roomID == "" {
				where += " " + ev.RoomID
			}
			lines = append(lines, fmt.Sprintf("  [%s] %s", where, ev.String()))
		}
	}
	if len(lines) == 0 {
		return "(no events fetched recently for that room)"
	}
	return "events fetched recently (consumed or not):\n" + strings.Join(lines, "\n")
}
