package bench_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	mas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/e2ee"
	"github.com/opsbot/opsbot/appservice/intake"
	"github.com/opsbot/opsbot/appservice/metrics"
	"github.com/opsbot/opsbot/appservice/outbox"
	"github.com/opsbot/opsbot/appservice/pipeline"
	"github.com/opsbot/opsbot/appservice/stages"
	"github.com/opsbot/opsbot/appservice/store"
	"github.com/opsbot/opsbot/appservice/store/storetest"
	"github.com/opsbot/opsbot/integration/bench"
	"github.com/opsbot/opsbot/skills"
)

// warmup transactions run before the timer starts in every variant.
const warmup = 20

// BenchmarkIntake measures transaction intake over loopback HTTP, side by
// side: the two floors, opsbot's intake with its durable inbox, and
// opsbot's whole plaintext pipeline (inbox, pipeline workers, skills
// engine, outbox replying to a stub homeserver); at c=1 also the pipeline
// with a skill that matches every message but does not answer.
func BenchmarkIntake(b *testing.B) {
	for _, c := range []int{1, 4} {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) {
			b.Run("floor-nethttp", func(b *testing.B) { benchFloor(b, c, false) })
			b.Run("floor-mautrix", func(b *testing.B) { benchFloor(b, c, true) })
			for _, db := range storetest.Dialects {
				b.Run("intake-"+db, func(b *testing.B) { benchIntakeOnly(b, c, db) })
			}
			for _, db := range storetest.Dialects {
				b.Run("full-"+db, func(b *testing.B) { benchFull(b, c, db, true) })
			}
			if c == 1 {
				for _, db := range storetest.Dialects {
					b.Run("noreply-"+db, func(b *testing.B) { benchFull(b, c, db, false) })
				}
			}
		})
	}
}

func benchFloor(b *testing.B, concurrency int, mautrix bool) {
	var count atomic.Int64
	var h http.Handler
	if mautrix {
		var stop func()
		h, stop = bench.MautrixFloor(&count)
		defer stop()
	} else {
		h = bench.NetHTTPFloor(&count)
	}
	url, _ := bench.Serve(b, h)
	txns := bench.NewPlainTxns(bench.NewRun())
	b.SetBytes(int64(txns.Size()))
	bench.Drive(b, bench.Load{URL: url, Concurrency: concurrency, Warmup: warmup, Body: txns.Body})
	if err := bench.WaitCount(&count, int64((warmup+b.N)*bench.EventsPerTxn), 10*time.Second); err != nil {
		b.Fatal(err)
	}
}

// logger is what opsbot logs to in the benchmarks: the production default
// (info level, JSON with timestamps), written nowhere.
func logger() zerolog.Logger {
	return zerolog.New(io.Discard).Level(zerolog.InfoLevel).With().Timestamp().Logger()
}

// openStore opens and migrates a new opsbot database of the given type, and
// for Postgres returns a probe of the server's CPU spent on it.
func openStore(b *testing.B, dbType string) (*store.Store, bench.Probes) {
	b.Helper()
	cfg := storetest.Config(b, dbType)
	st, err := store.Open(cfg, logger())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	if err := st.Upgrade(context.Background()); err != nil {
		b.Fatal(err)
	}
	probes := bench.Probes{&bench.DBConns{DB: st.DB.RawDB}}
	if dbType == "postgres" {
		admin := os.Getenv("OPSBOT_TEST_POSTGRES")
		if admin == "" {
			admin = storetest.DefaultPostgres
		}
		adb, err := sql.Open("pgx", admin)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { adb.Close() })
		probes = append(probes, &bench.PostgresCPU{Admin: adb})
	}
	return st, probes
}

// benchTerm is a leadership term that always holds (one process), as
// SQLite's: its Hold costs what the real one costs beyond the lock.
type benchTerm struct{}

func (benchTerm) Epoch() int64                   { return 1 }
func (benchTerm) Hold(ctx context.Context) error { return nil }
func (benchTerm) Valid() bool                    { return true }

// termRecorder records under benchTerm, as appservice.Service's does under
// its term.
type termRecorder struct{ st *store.Store }

func (r termRecorder) RecordTransaction(ctx context.Context, txnID string, events []store.InboxEvent) ([]store.InboxEvent, bool, bool, error) {
	return r.st.RecordTransaction(ctx, txnID, events, benchTerm{})
}

// intakeHandler is opsbot's intake as appservice.Service wires it.
func intakeHandler(st *store.Store, m *metrics.Metrics, deliver func([]store.InboxEvent)) http.Handler {
	var active atomic.Bool
	active.Store(true)
	mux := http.NewServeMux()
	intake.New(intake.Options{
		HSToken:      bench.HSToken,
		MaxBodyBytes: config.DefaultMaxBodyBytes,
		Store:        termRecorder{st},
		Deliver:      deliver,
		IsOurUser:    func(u id.UserID) bool { return u == bench.Bot },
		Overloaded:   func() bool { return false },
		Standby:      func() bool { return !active.Load() },
		Log:          logger().With().Str("component", "intake").Logger(),
		Observe:      func(outcome string, _ int) { m.Transactions.WithLabelValues(outcome).Inc() },
	}).Register(mux)
	return mux
}

func benchIntakeOnly(b *testing.B, concurrency int, dbType string) {
	st, probes := openStore(b, dbType)
	m := metrics.New(metrics.Options{Version: "bench", Backlog: func() int64 { return 0 }})
	var delivered atomic.Int64
	url, _ := bench.Serve(b, intakeHandler(st, m, func(evs []store.InboxEvent) { delivered.Add(int64(len(evs))) }))
	txns := bench.NewPlainTxns(bench.NewRun())
	b.SetBytes(int64(txns.Size()))
	bench.Drive(b, bench.Load{URL: url, Concurrency: concurrency, Warmup: warmup, Body: txns.Body, Extra: probes})
	if got, want := delivered.Load(), int64((warmup+b.N)*bench.EventsPerTxn); got != want {
		b.Fatalf("delivered %d events, want %d", got, want)
	}
}

// ackSkill matches every message that mentions "deploy" (all benchmark
// messages) and, if reply is set, answers it with a reply.
type ackSkill struct{ reply bool }

func (ackSkill) Name() string { return "ack" }
func (s ackSkill) Setup(r *skills.Router, cfg skills.Config) error {
	r.Regex(`(?i)\bdeploy\b`, func(ctx context.Context, ev *skills.Event) error {
		if !s.reply {
			return nil
		}
		_, err := ev.Reply(ctx, "ack")
		return err
	})
	return nil
}

// roomBots is the membership stage's bot manager for the benchmark: the
// bot is in every benchmark room (set in the state store beforehand).
type roomBots struct {
	ss   *store.CachedStateStore
	bots []id.UserID
}

func (r roomBots) RoomBots(ctx context.Context, room id.RoomID) []id.UserID {
	var out []id.UserID
	for _, b := range r.bots {
		if r.ss.IsInRoom(ctx, room, b) {
			out = append(out, b)
		}
	}
	return out
}

func (roomBots) HandleMember(context.Context, *event.Event)                 {}
func (roomBots) HandleTombstone(context.Context, *event.Event, []id.UserID) {}

// machineCrypto is the bot's OlmMachine as the crypto stage and the outbox
// use it through appservice/e2ee's Manager (whose device set-up needs a
// homeserver): decryption, and encryption with a room key already shared.
// Sharing a new room key (every 100 messages of a room, and when members
// change) means an Olm encryption per recipient device and a to-device
// request: not part of this benchmark; a new session is made locally.
type machineCrypto struct {
	mach *crypto.OlmMachine
	mu   sync.Mutex
}

func (c *machineCrypto) HandleState(context.Context, *event.Event, []id.UserID) {}

func (c *machineCrypto) TryDecrypt(ctx context.Context, evt *event.Event, _ []id.UserID) (*event.Event, string, error) {
	dec, err := c.mach.DecryptMegolmEvent(ctx, evt)
	switch {
	case errors.Is(err, crypto.ErrNoSessionFound):
		return nil, "no_session", err
	case err != nil:
		return nil, "error", err
	}
	dec.Mautrix.EventSource |= event.SourceDecrypted
	return dec, "ok", nil
}

func (c *machineCrypto) WaitForKey(context.Context, *event.Event, []id.UserID, time.Time) <-chan struct{} {
	return make(chan struct{})
}

func (c *machineCrypto) RequestKey(context.Context, *event.Event, []id.UserID) {}

func (c *machineCrypto) Encrypt(ctx context.Context, _ id.UserID, room id.RoomID, evtType event.Type, content any) (event.Type, any, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	enc, err := c.mach.EncryptMegolmEvent(ctx, room, evtType, content)
	if errors.Is(err, crypto.ErrNoGroupSession) || errors.Is(err, crypto.ErrSessionExpired) {
		if err := shareLocally(ctx, c.mach, room); err != nil {
			return evtType, nil, err
		}
		enc, err = c.mach.EncryptMegolmEvent(ctx, room, evtType, content)
	}
	if err != nil {
		return evtType, nil, err
	}
	return event.EventEncrypted, enc, nil
}

// shareLocally makes a new outbound room key for room and takes it as
// shared (see machineCrypto).
func shareLocally(ctx context.Context, mach *crypto.OlmMachine, room id.RoomID) error {
	ogs, err := crypto.NewOutboundGroupSession(room, &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}, nil)
	if err != nil {
		return err
	}
	ogs.Shared = true
	return mach.CryptoStore.AddOutboundGroupSession(ctx, ogs)
}

// inbox is the store as the pipeline's inbox, telling the tracker about
// every event marked done; with encryption the marks take the message
// indexes along, as appservice.Service's inbox does.
type inbox struct {
	*store.Store
	tracker *bench.Tracker
	indexes *e2ee.Shared
}

func (i inbox) MarkDone(ctx context.Context, fence store.Fence, seqs []int64) error {
	var batch e2ee.IndexBatch
	if i.indexes != nil {
		batch = i.indexes.TakeIndexes()
	}
	err := i.DB.DoTxn(ctx, nil, func(ctx context.Context) error {
		if i.indexes != nil {
			if err := i.indexes.WriteIndexes(ctx, batch); err != nil {
				return err
			}
		}
		return i.Store.MarkDone(ctx, fence, seqs)
	})
	if err != nil && i.indexes != nil {
		i.indexes.RestoreIndexes(batch)
	}
	if err == nil {
		for _, seq := range seqs {
			i.tracker.Marked(seq)
		}
	}
	return err
}

// fullOpsbot is opsbot's plaintext (or, with decrypt, encrypted) pipeline.
type fullOpsbot struct {
	URL     string
	Store   *store.Store
	State   *store.CachedStateStore
	Tracker *bench.Tracker
	Probes  bench.Probes
	HS      *bench.Homeserver
}

// newFullOpsbot wires intake, the inbox, the room state store, the
// pipeline with opsbot's stages, the skills engine and the outbox the way
// appservice.New does, for transactions 0..txns-1 of run; reply says
// whether the skill answers. prepare, if set, runs before the pipeline
// starts and returns the bot's encryption: then the rooms are encrypted,
// events are decrypted and replies encrypted, and the done marks carry the
// message indexes, as in opsbot.
func newFullOpsbot(b *testing.B, dbType, run string, txns int, reply bool,
	prepare func(f *fullOpsbot) *machineCrypto,
) *fullOpsbot {
	b.Helper()
	ctx := context.Background()
	log := logger()
	st, probes := openStore(b, dbType)
	ss := store.NewCachedStateStore(st.DB)
	if err := ss.Upgrade(ctx); err != nil {
		b.Fatal(err)
	}
	f := &fullOpsbot{Store: st, State: ss, Tracker: bench.NewTracker(run, txns, reply)}
	f.HS = bench.NewHomeserver(b, f.Tracker)
	f.Probes = append(probes, &bench.ConnProbe{Name: "hs", Conns: f.HS.Conns})

	var backlog func() int64
	m := metrics.New(metrics.Options{Version: "bench", Backlog: func() int64 { return backlog() }})
	as, err := mas.CreateFull(mas.CreateOpts{
		Registration:     &mas.Registration{ID: "opsbot", AppToken: bench.ASToken, ServerToken: bench.HSToken, SenderLocalpart: "opsbot"},
		HomeserverDomain: bench.Domain,
		HomeserverURL:    f.HS.URL,
		StateStore:       ss,
	})
	if err != nil {
		b.Fatal(err)
	}
	as.Log = log.With().Str("component", "mautrix").Logger()
	as.DefaultHTTPRetries = 0
	as.HTTPClient.Timeout = 60 * time.Second
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 32 // as appservice.New does
	as.HTTPClient.Transport = transport
	bot := id.UserID(bench.Bot)
	if err := ss.MarkRegistered(ctx, bot); err != nil {
		b.Fatal(err)
	}
	for i := range bench.Rooms {
		room := id.RoomID(bench.RoomID(i))
		for _, u := range []id.UserID{bot, bench.Sender} {
			if err := ss.SetMembership(ctx, room, u, event.MembershipJoin); err != nil {
				b.Fatal(err)
			}
		}
	}
	bots := roomBots{ss, []id.UserID{bot}}
	in := inbox{Store: st, tracker: f.Tracker}
	var enc *machineCrypto
	if prepare != nil {
		enc = prepare(f)
		in.indexes = enc.mach.CryptoStore.(*e2ee.Store).Shared()
		for i := range bench.Rooms {
			err := ss.SetEncryptionEvent(ctx, id.RoomID(bench.RoomID(i)), &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1})
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	// As in appservice.New, the outbox comes after encryption (none, not a
	// nil *machineCrypto, without it).
	var encryptor outbox.Encryptor
	if enc != nil {
		encryptor = enc
	}
	ob := outbox.New(outbox.Options{AS: as, Encryptor: encryptor, Observe: m.ObserveSend,
		Log: log.With().Str("component", "outbox").Logger()})
	engine, err := skills.NewEngine(skills.Options{
		Sender:  ob,
		Log:     log.With().Str("component", "skills").Logger(),
		Observe: m.ObserveSkill,
	}, []skills.Skill{ackSkill{reply}}, nil, []skills.BotSpec{{ID: bot, Prefix: "!", Skills: []string{"ack"}, ConfigKey: "bots[0]"}})
	if err != nil {
		b.Fatal(err)
	}
	var encryption stages.Encryption // as for the outbox
	if enc != nil {
		encryption = enc
	}
	cryptoStage := stages.NewCrypto(stages.CryptoOptions{E2EE: encryption, IsBot: func(u id.UserID) bool { return u == bot },
		DecryptWait: 30 * time.Second, Engine: func() *skills.Engine { return engine }, Observe: m.ObserveDecrypt})
	path := stages.NewPath(stages.PathOptions{Bots: bots, Log: log, Stages: []stages.Stage{
		stages.NewState(ss), stages.NewMembership(bots), cryptoStage, stages.NewVerification(nil),
		stages.NewSkills(func() *skills.Engine { return engine }),
	}})
	p := pipeline.New(pipeline.Options{
		Inbox:   in,
		Handler: path,
		Log:     log.With().Str("component", "pipeline").Logger(),
		Observe: m.ObserveEvent,
	})
	backlog = p.Backlog
	workCtx, stop := context.WithCancel(ctx)
	if err := p.Start(workCtx, benchTerm{}); err != nil {
		b.Fatal(err)
	}
	p.Open()
	b.Cleanup(func() { stop(); p.Wait() })
	f.URL, _ = bench.Serve(b, intakeHandler(st, m, func(evs []store.InboxEvent) {
		for _, ev := range evs {
			f.Tracker.Delivered(ev.Seq, ev.TxnID)
		}
		p.Deliver(evs)
	}))
	return f
}

func benchFull(b *testing.B, concurrency int, dbType string, reply bool) {
	run := bench.NewRun()
	f := newFullOpsbot(b, dbType, run, warmup+b.N, reply, nil)
	txns := bench.NewPlainTxns(run)
	b.SetBytes(int64(txns.Size()))
	bench.Drive(b, bench.Load{URL: f.URL, Concurrency: concurrency, Warmup: warmup,
		Body: txns.Body, Done: f.Tracker.Done, Extra: f.Probes})
	if err := f.Tracker.Check(); err != nil {
		b.Fatal(err)
	}
	checkReplies(b, f, warmup+b.N, reply)
}

func checkReplies(b *testing.B, f *fullOpsbot, txns int, reply bool) {
	want := int64(0)
	if reply {
		want = int64(txns * bench.EventsPerTxn)
	}
	if got := f.HS.Sends.Load(); got != want {
		b.Fatalf("%d replies sent, want %d", got, want)
	}
}
