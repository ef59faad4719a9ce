// Package metrics defines opsbot's Prometheus metrics (all prefixed
// opsbot_) and serves them on their own listener at /metrics. Label values
// come from small fixed sets (outcomes, known event types, configured skill
// and bot names): never from message content, tokens or user IDs, which
// would leak data and explode cardinality.
package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Metrics holds opsbot's collectors, registered on their own registry.
type Metrics struct {
	Registry *prometheus.Registry

	Transactions  *prometheus.CounterVec   // outcome
	ClientSyncs   *prometheus.CounterVec   // bot, outcome
	Events        *prometheus.CounterVec   // type
	EventSeconds  *prometheus.HistogramVec // type
	Backlog       prometheus.GaugeFunc
	Decryptions   *prometheus.CounterVec // bot, outcome
	Encryptions   *prometheus.CounterVec // outcome
	ToDevice      *prometheus.CounterVec // outcome
	SkillRuns     *prometheus.CounterVec // skill, outcome
	SkillSeconds  *prometheus.HistogramVec
	Sends         *prometheus.CounterVec // op, outcome
	SendSeconds   *prometheus.HistogramVec
	BuildInfo     *prometheus.GaugeVec
	BotDevices    prometheus.Gauge
	Leader        prometheus.Gauge
	OneTimeKeys   *prometheus.GaugeVec   // bot
	CrossSigned   *prometheus.GaugeVec   // bot
	KeyDelivery   *prometheus.GaugeVec   // bot
	KeysBackedUp  *prometheus.CounterVec // bot
	Verifications *prometheus.CounterVec // outcome
	// VerificationsWaiting: verifications whose short authentication
	// string waits for the operator's decision.
	VerificationsWaiting prometheus.Gauge
	// CommandsRefused: commands not obeyed for the device they came from
	// (encryption.command_trust), by reason.
	CommandsRefused *prometheus.CounterVec
	BackupFailures  *prometheus.CounterVec // bot, stage
	Ready           prometheus.GaugeFunc
	// LeaderEpoch is the epoch of this process's leadership term.
	LeaderEpoch prometheus.Gauge
	// ParkedRooms and ParkedOldest: rooms whose next event waits (for its
	// room key), and how long the oldest has waited.
	ParkedRooms  prometheus.GaugeFunc
	ParkedOldest prometheus.GaugeFunc

	opts Options
}

// Options configure the metrics. The sources are asked at each scrape, so
// they may read parts built after the metrics (the pipeline, which reports
// to them); a source not set reports 0.
type Options struct {
	// Version is reported by opsbot_build_info.
	Version string
	// Backlog reports the pipeline's unhandled events.
	Backlog func() int64
	// Ready reports what opsbot_ready says.
	Ready func() bool
	// Parked reports the parked rooms and how long the oldest has waited.
	Parked func() (int, time.Duration)
}

// Label values known in advance. Their series are created at 0 when opsbot
// starts, so that rate() and increase() see the first failure (a series
// that appears with the value 1 shows no increase) and a dashboard panel of
// failures shows 0 rather than nothing.
var (
	transactionOutcomes  = []string{"ok", "duplicate", "duplicate_grown", "standby", "unauthorized", "forbidden", "too_large", "not_json", "overloaded", "store_error"}
	decryptionOutcomes   = []string{"ok", "late_key", "no_session", "no_key_delivery", "error"}
	encryptionOutcomes   = []string{"ok", "error"}
	toDeviceOutcomes     = []string{"ok", "unknown_device"}
	skillOutcomes        = []string{"ok", "error", "panic"}
	homeserverOps        = []string{"send", "redact", "upload", "membership", "state", "typing", "receipt"}
	homeserverOutcomes   = []string{"ok", "retryable", "failed"}
	verificationOutcomes = []string{"done", "refused", "cancelled", "timeout"}
	backupStages         = []string{"setup", "upload"}
	// refusalReasons are policy.RefusalReasons (metrics does not import policy).
	refusalReasons = []string{"not_cross_signed", "not_verified", "plain_room"}
)

// New creates and registers the metrics.
func New(opts Options) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{Registry: reg, opts: opts}
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m.Transactions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opsbot_transactions_total",
		Help: "Transactions pushed by the homeserver, by outcome (ok, duplicate, duplicate_grown, standby, unauthorized, forbidden, too_large, not_json, overloaded, store_error)."}, []string{"outcome"})
	m.ClientSyncs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opsbot_client_syncs_total",
		Help: "/sync batches of client-mode bots, by bot and outcome (ok, error, store_error)."}, []string{"bot", "outcome"})
	m.Events = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opsbot_events_total",
		Help: "Events handled by the pipeline, by event type (unknown types count as other)."}, []string{"type"})
	m.EventSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "opsbot_event_handling_seconds",
		Help: "Time to handle one event, decryption and skills included.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 9)}, []string{"type"})
	m.Backlog = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "opsbot_inbox_backlog",
		Help: "Events recorded but not yet handled."}, func() float64 {
		if m.opts.Backlog == nil {
			return 0
		}
		return float64(m.opts.Backlog())
	})
	m.Decryptions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opsbot_decryptions_total",
		Help: "Encrypted room events, by the room's first bot (in config order) and outcome (ok, late_key, no_session, error)."}, []string{"bot", "outcome"})
	m.Encryptions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opsbot_encryptions_total",
		Help: "Messages encrypted by the bots, by outcome."}, []string{"outcome"})
	m.ToDevice = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opsbot_to_device_events_total",
		Help: "To-device events from transactions (appservice key delivery), by outcome."}, []string{"outcome"})
	m.SkillRuns = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opsbot_skill_invocations_total",
		Help: "Skill handler runs, by skill and outcome (ok, error, panic)."}, []string{"skill", "outcome"})
	m.SkillSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "opsbot_skill_duration_seconds",
		Help: "Skill handler run time.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 9)}, []string{"skill"})
	m.Sends = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opsbot_homeserver_requests_total",
		Help: "Requests the outbox made to the homeserver, by operation (send, redact, upload, membership, state, typing, receipt) and outcome (ok, retryable, failed)."}, []string{"op", "outcome"})
	m.SendSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "opsbot_homeserver_request_seconds",
		Help: "Latency of the outbox's homeserver requests, by operation.", Buckets: prometheus.ExponentialBuckets(0.002, 4, 8)}, []string{"op"})
	m.BuildInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "opsbot_build_info",
		Help: "Always 1; the version label says which opsbot runs."}, []string{"version"})
	m.BotDevices = prometheus.NewGauge(prometheus.GaugeOpts{Name: "opsbot_bot_devices",
		Help: "Bot encryption devices running."})
	m.OneTimeKeys = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "opsbot_one_time_keys",
		Help: "Signed curve25519 one-time keys the homeserver holds for each bot's device (opsbot tops them up when low)."}, []string{"bot"})
	m.KeyDelivery = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "opsbot_bot_key_delivery",
		Help: "1 when the bot's device receives encryption keys (through /sync or transactions), 0 when the homeserver delivers it none (the log and check say why)."}, []string{"bot"})
	m.CrossSigned = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "opsbot_bot_cross_signed",
		Help: "1 when the bot's device is signed by its cross-signing keys, 0 when setting them up failed (the log says why)."}, []string{"bot"})
	m.KeysBackedUp = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opsbot_key_backup_uploaded_total",
		Help: "Room keys uploaded to each bot's server-side key backup."}, []string{"bot"})
	m.Verifications = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opsbot_verifications_total",
		Help: "Interactive verifications with the bots, by how they ended (done, refused, cancelled, timeout)."}, []string{"outcome"})
	m.VerificationsWaiting = prometheus.NewGauge(prometheus.GaugeOpts{Name: "opsbot_verifications_waiting",
		Help: "Verifications whose emoji or numbers wait for the operator's decision (opsbot-appservice verification list)."})
	m.CommandsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opsbot_commands_refused_total",
		Help: "Commands (and regex or parse matches) not obeyed because of the device they came from (encryption.command_trust), by reason (not_cross_signed, not_verified, plain_room)."}, []string{"reason"})
	m.BackupFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opsbot_key_backup_failures_total",
		Help: "Failures of each bot's server-side key backup, by stage: setup (at start; the backup stays off until a restart) or upload (retried)."}, []string{"bot", "stage"})
	m.Leader = prometheus.NewGauge(prometheus.GaugeOpts{Name: "opsbot_leader",
		Help: "1 while this process is the leader (handles events), 0 while it stands by."})
	m.Ready = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "opsbot_ready",
		Help: "1 while this process is the leader and takes transactions: what /readyz reports, before its database and homeserver checks."}, func() float64 {
		if m.opts.Ready != nil && m.opts.Ready() {
			return 1
		}
		return 0
	})
	m.LeaderEpoch = prometheus.NewGauge(prometheus.GaugeOpts{Name: "opsbot_leader_epoch",
		Help: "The leadership epoch of this process's term (0 while it stands by); each new leader increments it."})
	m.ParkedRooms = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "opsbot_parked_rooms",
		Help: "Rooms whose next event waits for its room key; their later events wait behind it, other rooms go on."}, func() float64 {
		n, _ := m.parked()
		return float64(n)
	})
	m.ParkedOldest = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "opsbot_parked_oldest_seconds",
		Help: "How long the longest-waiting parked room has waited (0 if none waits)."}, func() float64 {
		_, oldest := m.parked()
		return oldest.Seconds()
	})
	for _, c := range []prometheus.Collector{m.Leader, m.LeaderEpoch, m.ParkedRooms, m.ParkedOldest, m.Ready, m.OneTimeKeys, m.Transactions, m.ClientSyncs, m.Events, m.EventSeconds, m.Backlog, m.Decryptions, m.Encryptions,
		m.ToDevice, m.SkillRuns, m.SkillSeconds, m.Sends, m.SendSeconds, m.BuildInfo, m.BotDevices,
		m.CrossSigned, m.KeyDelivery, m.KeysBackedUp, m.BackupFailures, m.Verifications, m.VerificationsWaiting,
		m.CommandsRefused,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		f(c)
	}
	m.BuildInfo.WithLabelValues(opts.Version).Set(1)
	for _, o := range transactionOutcomes {
		m.Transactions.WithLabelValues(o)
	}
	for _, o := range encryptionOutcomes {
		m.Encryptions.WithLabelValues(o)
	}
	for _, o := range toDeviceOutcomes {
		m.ToDevice.WithLabelValues(o)
	}
	for _, op := range homeserverOps {
		for _, o := range homeserverOutcomes {
			m.Sends.WithLabelValues(op, o)
		}
	}
	for _, o := range verificationOutcomes {
		m.Verifications.WithLabelValues(o)
	}
	for _, r := range refusalReasons {
		m.CommandsRefused.WithLabelValues(r)
	}
	return m
}

func (m *Metrics) parked() (int, time.Duration) {
	if m.opts.Parked != nil {
		return m.opts.Parked()
	}
	return 0, 0
}

// InitBots creates the per-bot encryption counters at 0 for the configured
// bots (the only values the bot label takes).
func (m *Metrics) InitBots(bots []id.UserID) {
	for _, b := range bots {
		for _, o := range decryptionOutcomes {
			m.Decryptions.WithLabelValues(b.String(), o)
		}
		for _, st := range backupStages {
			m.BackupFailures.WithLabelValues(b.String(), st)
		}
		m.KeysBackedUp.WithLabelValues(b.String())
	}
}

// InitSkills creates the run counters of the configured skills at 0.
func (m *Metrics) InitSkills(skills []string) {
	for _, s := range skills {
		for _, o := range skillOutcomes {
			m.SkillRuns.WithLabelValues(s, o)
		}
	}
}

// knownTypes bounds the type label: any other event type counts as "other".
// Types with an unstable name count under the stable one (typeAliases).
var knownTypes = map[string]bool{
	"m.room.message": true, "m.room.encrypted": true, "m.room.member": true, "m.reaction": true,
	"m.room.redaction": true, "m.room.name": true, "m.room.topic": true, "m.room.avatar": true,
	"m.room.power_levels": true, "m.room.encryption": true, "m.room.create": true, "m.room.join_rules": true,
	"m.room.history_visibility": true, "m.room.tombstone": true, "m.typing": true, "m.receipt": true,
	"m.presence": true, "m.sticker": true, "m.poll.start": true, "m.poll.response": true, "m.poll.end": true,
	"m.room_key": true, "m.room_key_request": true, "m.forwarded_room_key": true, "m.key.verification.request": true,
}

// typeAliases are the unstable names clients send for types in knownTypes:
// Element sends polls as MSC3381's org.matrix.msc3381.poll.*.
var typeAliases = map[string]string{
	"org.matrix.msc3381.poll.start":    "m.poll.start",
	"org.matrix.msc3381.poll.response": "m.poll.response",
	"org.matrix.msc3381.poll.end":      "m.poll.end",
}

// EventType maps an event type to a bounded label value.
func EventType(t string) string {
	if stable, ok := typeAliases[t]; ok {
		return stable
	}
	if knownTypes[t] {
		return t
	}
	return "other"
}

// ObserveEvent records one handled event.
func (m *Metrics) ObserveEvent(evtType string, took time.Duration) {
	t := EventType(evtType)
	m.Events.WithLabelValues(t).Inc()
	m.EventSeconds.WithLabelValues(t).Observe(took.Seconds())
}

// ObserveSend records one outbox request.
func (m *Metrics) ObserveSend(op string, err error, took time.Duration) {
	outcome := "ok"
	if err != nil {
		outcome = "failed"
		var httpErr mautrix.HTTPError
		if !errors.As(err, &httpErr) || httpErr.Response == nil || httpErr.Response.StatusCode >= 500 || httpErr.Response.StatusCode == 429 {
			outcome = "retryable"
		}
	}
	m.Sends.WithLabelValues(op, outcome).Inc()
	m.SendSeconds.WithLabelValues(op).Observe(took.Seconds())
}

// ObserveCrypto records an encryption-side outcome (decryptions have their
// own, ObserveDecrypt).
func (m *Metrics) ObserveCrypto(op, outcome string) {
	switch op {
	case "encrypt":
		m.Encryptions.WithLabelValues(outcome).Inc()
	case "to_device":
		m.ToDevice.WithLabelValues(outcome).Inc()
	}
}

// ObserveDecrypt records one decryption of an event in a room whose first
// bot (in config order) is bot.
func (m *Metrics) ObserveDecrypt(bot id.UserID, outcome string) {
	m.Decryptions.WithLabelValues(bot.String(), outcome).Inc()
}

// ObserveBackupFailure records a failure of a bot's key backup at a stage
// (setup or upload).
func (m *Metrics) ObserveBackupFailure(bot id.UserID, stage string) {
	m.BackupFailures.WithLabelValues(bot.String(), stage).Inc()
}

// ObserveRefusal counts a command refused for its device (policy.Trust).
func (m *Metrics) ObserveRefusal(reason string) {
	m.CommandsRefused.WithLabelValues(reason).Inc()
}

// ObserveSkill records one handler run.
func (m *Metrics) ObserveSkill(skill, outcome string, took time.Duration) {
	m.SkillRuns.WithLabelValues(skill, outcome).Inc()
	m.SkillSeconds.WithLabelValues(skill).Observe(took.Seconds())
}

// Serve serves /metrics on addr until ctx ends.
func (m *Metrics) Serve(ctx context.Context, addr string, log zerolog.Logger) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	log.Info().Str("listen", l.Addr().String()).Msg("Serving Prometheus metrics at /metrics")
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("Metrics listener stopped")
		}
	}()
	return nil
}
