// Package intake is where events enter opsbot: the homeserver-facing
// appservice API (pushed transactions, user and room-alias queries, ping)
// and, for client-mode bots, their /sync (sync.go). A transaction is
// answered 200 only once it and its events are durably recorded in the
// inbox; a transaction ID seen before, even before a restart, is
// acknowledged without being processed again. A /sync batch and the
// position after it are recorded in one step the same way.
package intake

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/pipeline"
	"github.com/opsbot/opsbot/appservice/store"
	"github.com/opsbot/opsbot/skills/auth"
)

// Recorder durably records transactions (appservice/store implements it).
type Recorder interface {
	// RecordTransaction records events, and says whether they were
	// claimed by this process's leadership term (then intake delivers
	// them; else the leader picks them up from the inbox).
	RecordTransaction(ctx context.Context, txnID string, events []store.InboxEvent) (recorded []store.InboxEvent, claimed, duplicate bool, err error)
}

// Options configure a Handler. All fields are required unless noted.
type Options struct {
	HSToken      string
	MaxBodyBytes int64
	Store        Recorder
	// Deliver hands freshly recorded and claimed events to the pipeline.
	// It must not block.
	Deliver func([]store.InboxEvent)
	// IsOurUser answers the homeserver's user queries.
	IsOurUser func(id.UserID) bool
	// DeviceInfo, if set, receives the MSC3202 device-list changes and
	// one-time-key counts of each new transaction (appservice key delivery).
	// They are not stored: a lost update costs a key refetch, not a message.
	DeviceInfo func(lists *mautrix.DeviceLists, otks map[id.UserID]map[id.DeviceID]mautrix.OTKCount)
	// KeysSeen, if set, is told for every recorded transaction whether it
	// carried to-device events (MSC2409) and device lists or one-time-key
	// counts (MSC3202): how opsbot learns what the homeserver pushes.
	KeysSeen func(toDevice, deviceInfo bool)
	// Standby, if set and true, makes intake refuse transactions with a
	// retryable error: this replica is not the leader (or not started yet).
	Standby func() bool
	// Overloaded, if set, makes intake refuse new transactions with a
	// retryable error while the pipeline is too far behind.
	Overloaded func() bool
	// Refuse, if set, makes intake read each transaction only to tell
	// KeysSeen what it carried, then refuse it with a retryable error
	// saying this: what `check` listens with while opsbot is not running.
	Refuse string
	Log    zerolog.Logger
	// Observe, if set, is told the outcome of every transaction ("ok",
	// "duplicate", "duplicate_grown", "unauthorized", "forbidden", "too_large", "not_json",
	// "overloaded", "store_error") and the number of events recorded.
	Observe func(outcome string, events int)
}

// Handler is the appservice API.
type Handler struct {
	opts Options
}

// New returns the appservice API; Register serves it.
func New(opts Options) *Handler { return &Handler{opts: opts} }

// Register adds the appservice API routes to mux, under the v1 prefix and,
// for homeservers that predate it, the legacy unprefixed paths.
func (h *Handler) Register(mux *http.ServeMux) {
	for _, prefix := range []string{"/_matrix/app/v1", ""} {
		mux.HandleFunc("PUT "+prefix+"/transactions/{txnID}", h.putTransaction)
		mux.HandleFunc("GET "+prefix+"/users/{userID}", h.getUser)
		mux.HandleFunc("GET "+prefix+"/rooms/{alias}", h.getRoom)
	}
	mux.HandleFunc("POST /_matrix/app/v1/ping", h.postPing)
}

// authorize checks the hs_token, from the Authorization header or (legacy)
// the access_token query parameter, in constant time.
func (h *Handler) authorize(w http.ResponseWriter, r *http.Request) bool {
	token := auth.Token(r, "access_token")
	if token == "" {
		h.observe("unauthorized", 0)
		writeError(w, http.StatusUnauthorized, "M_UNAUTHORIZED", "Missing hs_token")
		return false
	}
	if !auth.TokenMatches(token, h.opts.HSToken) {
		h.observe("forbidden", 0)
		h.opts.Log.Warn().Str("remote", r.RemoteAddr).Str("path", r.URL.Path).Msg("Rejected appservice request with a wrong hs_token")
		writeError(w, http.StatusForbidden, "M_FORBIDDEN", "Wrong hs_token")
		return false
	}
	return true
}

// wireTransaction is the part of a transaction opsbot reads at intake. The
// events stay raw here: each is stored as sent and decoded once, when filed.
type wireTransaction struct {
	Events           []json.RawMessage `json:"events"`
	Ephemeral        []json.RawMessage `json:"ephemeral"`
	MSC2409Ephemeral []json.RawMessage `json:"de.sorunome.msc2409.ephemeral"`
	ToDevice         []json.RawMessage `json:"to_device"`
	MSC2409ToDevice  []json.RawMessage `json:"de.sorunome.msc2409.to_device"`

	DeviceLists        *mautrix.DeviceLists `json:"device_lists"`
	MSC3202DeviceLists *mautrix.DeviceLists `json:"org.matrix.msc3202.device_lists"`
	OTKCounts          otkCounts            `json:"device_one_time_keys_count"`
	MSC3202OTKCounts   otkCounts            `json:"org.matrix.msc3202.device_one_time_keys_count"`
}

type otkCounts map[id.UserID]map[id.DeviceID]mautrix.OTKCount

// putTransaction files a pushed transaction in the inbox, once per
// transaction ID, and answers the homeserver only when it is stored.
func (h *Handler) putTransaction(w http.ResponseWriter, r *http.Request) {
	if !h.authorize(w, r) {
		return
	}
	txnID := r.PathValue("txnID")
	log := h.opts.Log.With().Str("txn_id", txnID).Logger()
	if h.opts.Standby != nil && h.opts.Standby() {
		h.observe("standby", 0)
		w.Header().Set("Retry-After", "2")
		writeError(w, http.StatusServiceUnavailable, "M_UNKNOWN", "This opsbot is standing by (not the leader); retry later")
		return
	}
	if h.opts.Overloaded != nil && h.opts.Overloaded() {
		h.observe("overloaded", 0)
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusServiceUnavailable, "M_UNKNOWN", "opsbot is catching up; retry later")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.opts.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			h.observe("too_large", 0)
			log.Warn().Int64("limit", h.opts.MaxBodyBytes).Msg("Rejected oversized transaction")
			writeError(w, http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "Transaction body is larger than appservice.max_body_bytes")
			return
		}
		writeError(w, http.StatusBadRequest, "M_UNKNOWN", "Could not read the request body")
		return
	}
	var txn wireTransaction
	if err := json.Unmarshal(body, &txn); err != nil {
		h.observe("not_json", 0)
		log.Warn().Err(err).Msg("Rejected transaction that is not valid JSON")
		writeError(w, http.StatusBadRequest, "M_NOT_JSON", "Transaction body is not a valid JSON object")
		return
	}
	events := make([]store.InboxEvent, 0, len(txn.Events)+len(txn.Ephemeral))
	events = file(log, events, txn.Events, store.KindPDU)
	if txn.Ephemeral != nil {
		events = file(log, events, txn.Ephemeral, store.KindEphemeral)
	} else {
		events = file(log, events, txn.MSC2409Ephemeral, store.KindEphemeral)
	}
	// To-device events carry room keys: they are stored like room events,
	// so that a crash cannot lose a key the homeserver will not send again.
	roomEvents := len(events)
	if txn.ToDevice != nil {
		events = file(log, events, txn.ToDevice, store.KindToDevice)
	} else {
		events = file(log, events, txn.MSC2409ToDevice, store.KindToDevice)
	}
	toDevice := len(events) > roomEvents
	lists, otks := txn.DeviceLists, txn.OTKCounts
	if lists == nil {
		lists = txn.MSC3202DeviceLists
	}
	if otks == nil {
		otks = txn.MSC3202OTKCounts
	}
	deviceInfo := (lists != nil && !lists.IsZero()) || len(otks) > 0
	if h.opts.Refuse != "" {
		if h.opts.KeysSeen != nil {
			h.opts.KeysSeen(toDevice, deviceInfo)
		}
		w.Header().Set("Retry-After", "2")
		writeError(w, http.StatusServiceUnavailable, "M_UNKNOWN", h.opts.Refuse)
		return
	}
	// Recording must finish even if the homeserver hangs up: it will retry,
	// and the retry must then find the transaction already recorded.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 30*time.Second)
	defer cancel()
	recorded, claimed, duplicate, err := h.opts.Store.RecordTransaction(ctx, txnID, events)
	if err != nil {
		h.observe("store_error", 0)
		log.Error().Err(err).Msg("Could not record transaction; the homeserver will retry")
		writeError(w, http.StatusServiceUnavailable, "M_UNKNOWN", "Could not record the transaction; retry later")
		return
	}
	switch {
	case duplicate && len(recorded) == 0:
		h.observe("duplicate", 0)
		log.Debug().Msg("Acknowledged a transaction that was already recorded")
	case duplicate:
		h.observe("duplicate_grown", len(recorded))
		log.Info().Int("new", len(recorded)).Msg("Homeserver re-sent a transaction ID with new events; recorded the new ones")
	default:
		h.observe("ok", len(recorded))
		log.Debug().Int("events", len(events)).Int("new", len(recorded)).Func(func(e *zerolog.Event) {
			types := make([]string, 0, len(events))
			for _, ev := range events {
				types = append(types, ev.Type)
			}
			e.Strs("types", types)
		}).Msg("Recorded transaction")
	}
	if len(recorded) > 0 && claimed {
		h.opts.Deliver(recorded)
	}
	if h.opts.DeviceInfo != nil && deviceInfo {
		h.opts.DeviceInfo(lists, otks)
	}
	if h.opts.KeysSeen != nil {
		h.opts.KeysSeen(toDevice, deviceInfo)
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// file appends the well-formed events of a list to the inbox batch (of a
// transaction or a /sync batch). A malformed event is logged and left out
// rather than failing the whole batch: the homeserver would send the same
// bad event again forever, blocking everything behind it.
func file(log zerolog.Logger, out []store.InboxEvent, raws []json.RawMessage, kind string) []store.InboxEvent {
	for i, raw := range raws {
		// The one decoding of the event: the pipeline gets it with the
		// event (store.InboxEvent.Decoded).
		ev := store.InboxEvent{Kind: kind, Payload: raw}
		evt, contentErr, err := pipeline.Parse(ev)
		if err != nil || evt.Type.Type == "" ||
			(kind == store.KindPDU && (evt.ID == "" || evt.RoomID == "")) ||
			(kind == store.KindToDevice && (evt.ToUserID == "" || evt.ToDeviceID == "")) {
			log.Warn().Int("index", i).Str("kind", kind).Msg("Dropped malformed event (not an object, or missing type, event_id, room_id, to_user_id or to_device_id)")
			continue
		}
		if contentErr != nil {
			log.Warn().Err(contentErr).Stringer("event_id", evt.ID).Str("type", evt.Type.Type).Msg("Event content does not fit its type; skills get only the raw content")
		}
		ev.EventID, ev.RoomID, ev.Type, ev.Decoded = evt.ID.String(), evt.RoomID.String(), evt.Type.Type, evt
		if kind == store.KindToDevice {
			// One queue for all to-device events of a device, in order:
			// Olm sessions break if their messages are handled out of order.
			ev.EventID, ev.RoomID = "", "to-device:"+evt.ToUserID.String()+"|"+evt.ToDeviceID.String()
		}
		out = append(out, ev)
	}
	return out
}

func (h *Handler) getUser(w http.ResponseWriter, r *http.Request) {
	if !h.authorize(w, r) {
		return
	}
	if h.opts.IsOurUser(id.UserID(r.PathValue("userID"))) {
		writeJSON(w, http.StatusOK, struct{}{})
		return
	}
	writeError(w, http.StatusNotFound, "M_NOT_FOUND", "No such user in this appservice")
}

// getRoom answers alias queries: opsbot owns no aliases.
func (h *Handler) getRoom(w http.ResponseWriter, r *http.Request) {
	if !h.authorize(w, r) {
		return
	}
	writeError(w, http.StatusNotFound, "M_NOT_FOUND", "No such room alias in this appservice")
}

func (h *Handler) postPing(w http.ResponseWriter, r *http.Request) {
	if !h.authorize(w, r) {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
	if err != nil || !json.Valid(body) {
		writeError(w, http.StatusBadRequest, "M_NOT_JSON", "Ping body is not JSON")
		return
	}
	h.opts.Log.Info().Msg("Homeserver pinged the appservice")
	writeJSON(w, http.StatusOK, struct{}{})
}

func (h *Handler) observe(outcome string, events int) {
	if h.opts.Observe != nil {
		h.opts.Observe(outcome, events)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]string{"errcode": code, "error": msg})
}
