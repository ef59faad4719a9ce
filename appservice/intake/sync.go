package intake

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/store"
	"github.com/opsbot/opsbot/skills/retry"
)

// This file is the intake of a client-mode bot (an ordinary account, no
// appservice): its own /sync, long-polled by the leader only. Each batch
// goes into the same inbox as a pushed transaction, with the position
// after it, in one database transaction (store.RecordSync): a crash loses
// nothing (the batch is fetched again from the stored position) and
// handles nothing twice (events de-duplicate by event ID). From the inbox
// on, the events take the same path as an appservice bot's.

// SyncRecorder durably records /sync batches (appservice/store).
type SyncRecorder interface {
	ClientSession(ctx context.Context, bot id.UserID) (*store.ClientSession, error)
	RecordSync(ctx context.Context, bot id.UserID, since, next string, events []store.InboxEvent, fence store.Fence) ([]store.InboxEvent, error)
}

// SyncOptions configure a Sync. All fields are required unless noted.
type SyncOptions struct {
	// Client is the bot's logged-in client (appservice/accounts).
	Client *mautrix.Client
	Store  SyncRecorder
	// Deliver hands freshly recorded events to the pipeline; it must not
	// block.
	Deliver func([]store.InboxEvent)
	// DeviceInfo, if set, is given each batch's device-list changes and the
	// device's one-time-key count before the batch is recorded (encryption).
	DeviceInfo func(ctx context.Context, lists *mautrix.DeviceLists, otks map[id.UserID]map[id.DeviceID]mautrix.OTKCount)
	// Overloaded, if set, makes the loop wait while the pipeline is too far
	// behind, as intake refuses transactions then.
	Overloaded func() bool
	// StopOnLostLogin makes Run return ErrLoginLost when the homeserver
	// no longer takes the bot's login, for a bot that can log in again
	// (it has a password): the next start does. Otherwise Run says so and
	// keeps trying, in case the token comes back.
	StopOnLostLogin bool
	// PollTimeout is how long the homeserver may hold a /sync open (30 s
	// if zero).
	PollTimeout time.Duration
	Log         zerolog.Logger
	// Observe, if set, is told the outcome of each batch ("ok", "error",
	// "store_error") and the number of events recorded.
	Observe func(outcome string, events int)
}

// Sync is one client-mode bot's /sync intake.
type Sync struct {
	opts SyncOptions
	bot  id.UserID
}

// NewSync returns the intake of the bot opts.Client is logged in as.
func NewSync(opts SyncOptions) *Sync {
	if opts.PollTimeout == 0 {
		opts.PollTimeout = 30 * time.Second
	}
	return &Sync{opts: opts, bot: opts.Client.UserID}
}

// Timeline limits: the first sync takes no history (a bot that logs in for
// the first time must not run the commands of last week); later ones take
// up to syncTimelineLimit events per room and batch, so that a restart
// after a burst finds every event it missed (a longer gap is logged).
const (
	firstTimelineLimit = 1
	syncTimelineLimit  = 1000
)

// syncFilter keeps a client-mode bot's /sync to what the event path uses:
// room events, typing and receipts, invites, to-device events, device lists
// and one-time-key counts; no presence, no account data.
func syncFilter(timelineLimit int) string {
	none := &mautrix.FilterPart{NotTypes: []event.Type{{Type: "*"}}}
	f := &mautrix.Filter{
		AccountData: none,
		Presence:    none,
		Room: &mautrix.RoomFilter{
			AccountData: none,
			Ephemeral:   &mautrix.FilterPart{Types: []event.Type{event.EphemeralEventTyping, event.EphemeralEventReceipt}},
			Timeline:    &mautrix.FilterPart{Limit: timelineLimit},
		},
	}
	data, _ := json.Marshal(f)
	return string(data)
}

// Run syncs until ctx ends or fence's term is over (then it returns
// store.ErrFenced: only the leader syncs). Homeserver and database errors
// are retried from the stored position.
func (s *Sync) Run(ctx context.Context, fence store.Fence) error {
	log := s.opts.Log.With().Stringer("bot", s.bot).Logger()
	var since string
	err := retry.Do(ctx, retry.Policy{Min: time.Second, Max: 30 * time.Second,
		Notify: retry.Every(10, func(_ int, err error, _ time.Duration) {
			log.Warn().Err(err).Msg("Could not read where the bot's /sync stands; retrying")
		})}, func() error {
		session, err := s.opts.Store.ClientSession(ctx, s.bot)
		if err == nil && session != nil {
			since = session.NextBatch
		}
		return err
	})
	if err != nil {
		return ctx.Err()
	}
	if since == "" {
		log.Info().Msg("First /sync of this login: pending invites and keys are taken, earlier room history is not")
	} else {
		log.Info().Msg("Resuming the bot's /sync where it stopped")
	}
	backoff := time.Second
	for ctx.Err() == nil {
		if s.opts.Overloaded != nil && s.opts.Overloaded() {
			if retry.Sleep(ctx, time.Second) != nil {
				break
			}
			continue
		}
		next, n, err := s.once(ctx, fence, since, log)
		switch {
		case err == nil:
			since, backoff = next, time.Second
			s.observe("ok", n)
			continue
		case ctx.Err() != nil:
		case errors.Is(err, store.ErrFenced), errors.Is(err, store.ErrSyncMoved):
			return err
		case errors.Is(err, errStore):
			s.observe("store_error", 0)
			log.Error().Err(err).Dur("retry_in", backoff).Msg("Could not record a /sync batch; fetching it again")
		case errors.Is(err, mautrix.MUnknownToken) && s.opts.StopOnLostLogin:
			s.observe("error", 0)
			return fmt.Errorf("%w: %w", ErrLoginLost, err)
		case errors.Is(err, mautrix.MUnknownToken):
			s.observe("error", 0)
			log.Error().Err(err).Msg("The homeserver no longer takes the bot's login (logged out, or the device was removed), and it has no password to log in again with: give it a new access token and restart opsbot")
			backoff = time.Minute
		default:
			s.observe("error", 0)
			log.Warn().Err(err).Dur("retry_in", backoff).Msg("/sync failed; retrying")
		}
		if retry.Sleep(ctx, backoff) != nil {
			break
		}
		backoff = min(backoff*2, 30*time.Second)
	}
	return nil
}

// ErrLoginLost is returned by Run (with StopOnLostLogin) when the
// homeserver no longer takes the bot's login.
var ErrLoginLost = errors.New("the homeserver no longer takes the bot's login (logged out, or the device was removed)")

// errStore marks a failure to record a batch (not the homeserver's).
var errStore = errors.New("recording the batch")

// once fetches one batch after since, records it, and hands it on.
func (s *Sync) once(ctx context.Context, fence store.Fence, since string, log zerolog.Logger) (next string, recorded int, err error) {
	resp, err := s.fetch(ctx, since)
	if err != nil {
		return "", 0, err
	}
	if resp.NextBatch == "" {
		return "", 0, errors.New("the homeserver's /sync answer has no next_batch")
	}
	events := s.batch(resp, since == "", log)
	if s.opts.DeviceInfo != nil {
		otks := map[id.UserID]map[id.DeviceID]mautrix.OTKCount{}
		if resp.OTKCount != nil {
			otks[s.bot] = map[id.DeviceID]mautrix.OTKCount{s.opts.Client.DeviceID: *resp.OTKCount}
		}
		s.opts.DeviceInfo(ctx, resp.DeviceLists, otks)
	}
	// Recording must finish once started: the batch is not fetched twice
	// for nothing, and a stop waits at most this long.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	got, err := s.opts.Store.RecordSync(rctx, s.bot, since, resp.NextBatch, events, fence)
	if err != nil {
		if errors.Is(err, store.ErrFenced) || errors.Is(err, store.ErrSyncMoved) {
			return "", 0, err
		}
		return "", 0, errors.Join(errStore, err)
	}
	if len(got) > 0 {
		log.Debug().Int("events", len(events)).Int("new", len(got)).Msg("Recorded /sync batch")
		s.opts.Deliver(got)
	}
	return resp.NextBatch, len(got), nil
}

// wireSync is the part of a /sync answer opsbot reads; events stay raw,
// like a transaction's, and are decoded once when filed.
type wireSync struct {
	NextBatch string `json:"next_batch"`
	Rooms     struct {
		Join map[id.RoomID]struct {
			State     wireEvents   `json:"state"`
			Timeline  wireTimeline `json:"timeline"`
			Ephemeral wireEvents   `json:"ephemeral"`
		} `json:"join"`
		Invite map[id.RoomID]struct {
			InviteState wireEvents `json:"invite_state"`
		} `json:"invite"`
		Leave map[id.RoomID]struct {
			State    wireEvents   `json:"state"`
			Timeline wireTimeline `json:"timeline"`
		} `json:"leave"`
	} `json:"rooms"`
	ToDevice    wireEvents           `json:"to_device"`
	DeviceLists *mautrix.DeviceLists `json:"device_lists"`
	OTKCount    *mautrix.OTKCount    `json:"device_one_time_keys_count"`
}

type wireEvents struct {
	Events []json.RawMessage `json:"events"`
}

type wireTimeline struct {
	Events  []json.RawMessage `json:"events"`
	Limited bool              `json:"limited"`
}

func (s *Sync) fetch(ctx context.Context, since string) (*wireSync, error) {
	cli := s.opts.Client
	limit := syncTimelineLimit
	if since == "" {
		limit = firstTimelineLimit
	}
	query := map[string]string{
		"timeout": strconv.FormatInt(s.opts.PollTimeout.Milliseconds(), 10),
		"filter":  syncFilter(limit),
	}
	if since != "" {
		query["since"] = since
	} else {
		query["timeout"] = "0"
	}
	u := cli.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "sync"}, query)
	// The poll may last PollTimeout; the client's own timeout is for
	// ordinary requests.
	pctx, cancel := context.WithTimeout(ctx, s.opts.PollTimeout+30*time.Second)
	defer cancel()
	var resp wireSync
	_, err := cli.MakeFullRequest(pctx, mautrix.FullRequest{Method: "GET", URL: u, ResponseJSON: &resp, MaxAttempts: 1})
	if err != nil {
		return nil, err
	}
	return &resp, nil
}

// batch turns a /sync answer into inbox events, in the order a transaction
// would carry them: each room's state and timeline, invites, leaves, typing
// and receipts, then the device's to-device events. first is the login's
// first sync: its room history is left out.
func (s *Sync) batch(resp *wireSync, first bool, log zerolog.Logger) []store.InboxEvent {
	var out []store.InboxEvent
	var ephemeral []json.RawMessage
	for room, joined := range resp.Rooms.Join {
		if first {
			continue // the bot's rooms were learned at start (bots.Start)
		}
		if join := s.ownJoin(joined.Timeline.Events); join >= 0 {
			// Joined in this batch: what came before the join is the
			// room's history and state, which an appservice is not sent
			// either (the bot fetched the state when it joined).
			out = file(log, out, inRoom(room, joined.Timeline.Events[join:]), store.KindPDU)
		} else {
			if joined.Timeline.Limited {
				log.Info().Stringer("room_id", room).Int("limit", syncTimelineLimit).
					Msg("More events came in this room than one /sync batch holds; the earlier ones are not handled")
			}
			out = file(log, out, inRoom(room, joined.State.Events), store.KindPDU)
			out = file(log, out, inRoom(room, joined.Timeline.Events), store.KindPDU)
		}
		ephemeral = append(ephemeral, inRoom(room, joined.Ephemeral.Events)...)
	}
	for room, invited := range resp.Rooms.Invite {
		if invite := s.invite(room, invited.InviteState.Events, resp.NextBatch); invite != nil {
			out = file(log, out, []json.RawMessage{invite}, store.KindPDU)
		} else {
			log.Warn().Stringer("room_id", room).Msg("An invite without the bot's own membership event in its invite state; it cannot be judged and is left alone")
		}
	}
	for room, left := range resp.Rooms.Leave {
		if first {
			continue
		}
		out = file(log, out, inRoom(room, left.State.Events), store.KindPDU)
		out = file(log, out, inRoom(room, left.Timeline.Events), store.KindPDU)
	}
	out = file(log, out, ephemeral, store.KindEphemeral)
	toDevice := make([]json.RawMessage, 0, len(resp.ToDevice.Events))
	for _, raw := range resp.ToDevice.Events {
		toDevice = append(toDevice, withFields(raw, "to_user_id", s.bot.String(), "to_device_id", s.opts.Client.DeviceID.String()))
	}
	return file(log, out, toDevice, store.KindToDevice)
}

// ownJoin returns the index of the bot's own join among a room's timeline
// events (a membership that becomes join, not a profile change), or -1.
func (s *Sync) ownJoin(events []json.RawMessage) int {
	type membership struct {
		Membership string `json:"membership"`
	}
	for i, raw := range events {
		var member struct {
			Type     string     `json:"type"`
			StateKey string     `json:"state_key"`
			Content  membership `json:"content"`
			Unsigned struct {
				PrevContent *membership `json:"prev_content"`
			} `json:"unsigned"`
		}
		if json.Unmarshal(raw, &member) == nil && member.Type == event.StateMember.Type &&
			member.StateKey == s.bot.String() && member.Content.Membership == "join" &&
			(member.Unsigned.PrevContent == nil || member.Unsigned.PrevContent.Membership != "join") {
			return i
		}
	}
	return -1
}

// invite returns the bot's own invite event from a room's invite state,
// as the room event an appservice would have been sent: invite state is
// stripped of event IDs, so it gets one derived from the room and the
// batch (an invite is in one batch; a later invite to the same room, after
// a leave, is another event).
func (s *Sync) invite(room id.RoomID, state []json.RawMessage, nextBatch string) json.RawMessage {
	for _, raw := range state {
		var stripped struct {
			Type     string  `json:"type"`
			StateKey *string `json:"state_key"`
			Sender   string  `json:"sender"`
		}
		if json.Unmarshal(raw, &stripped) != nil || stripped.Type != event.StateMember.Type ||
			stripped.StateKey == nil || *stripped.StateKey != s.bot.String() || stripped.Sender == "" {
			continue
		}
		sum := sha256.Sum256([]byte(room.String() + "|" + s.bot.String() + "|" + nextBatch))
		eventID := "$opsbot-invite-" + base64.RawURLEncoding.EncodeToString(sum[:18])
		return withFields(raw, "room_id", room.String(), "event_id", eventID)
	}
	return nil
}

// inRoom adds room_id to events, which /sync leaves out.
func inRoom(room id.RoomID, raws []json.RawMessage) []json.RawMessage {
	out := make([]json.RawMessage, len(raws))
	for i, raw := range raws {
		out[i] = withFields(raw, "room_id", room.String())
	}
	return out
}

// withFields returns the JSON object raw with string fields (name, value
// pairs) added at its start; a field raw has already keeps raw's value (a
// decoder takes the last of two). Anything but an object is returned as
// it is, for file to drop.
func withFields(raw json.RawMessage, pairs ...string) json.RawMessage {
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) < 2 || trimmed[0] != '{' {
		return raw
	}
	var b bytes.Buffer
	b.WriteByte('{')
	for i := 0; i+1 < len(pairs); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		name, _ := json.Marshal(pairs[i])
		value, _ := json.Marshal(pairs[i+1])
		b.Write(name)
		b.WriteByte(':')
		b.Write(value)
	}
	rest := bytes.TrimSpace(trimmed[1:])
	if len(rest) > 0 && rest[0] != '}' {
		b.WriteByte(',')
	}
	b.Write(rest)
	return b.Bytes()
}

func (s *Sync) observe(outcome string, events int) {
	if s.opts.Observe != nil {
		s.opts.Observe(outcome, events)
	}
}
