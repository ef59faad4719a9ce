// Package appservice wires opsbot together and runs it: New constructs the
// parts, Run starts them under a leadership term and stops them.
//
// Data flows one way (docs/architecture.md): intake records a pushed
// transaction in the inbox and acknowledges it; the pipeline takes each
// event through the stages (state, membership, crypto, verification,
// skills) and marks it done; skills act through the outbox.
package appservice

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	mas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/event/cmdschema"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/accounts"
	"github.com/opsbot/opsbot/appservice/bots"
	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/describe"
	"github.com/opsbot/opsbot/appservice/e2ee"
	"github.com/opsbot/opsbot/appservice/identity"
	"github.com/opsbot/opsbot/appservice/leader"
	"github.com/opsbot/opsbot/appservice/metrics"
	"github.com/opsbot/opsbot/appservice/outbox"
	"github.com/opsbot/opsbot/appservice/pipeline"
	"github.com/opsbot/opsbot/appservice/stages"
	"github.com/opsbot/opsbot/appservice/statememory"
	"github.com/opsbot/opsbot/appservice/store"
	"github.com/opsbot/opsbot/appservice/verification"
	"github.com/opsbot/opsbot/skills"
)

// MaxBacklog is how many recorded-but-unhandled events make intake ask the
// homeserver to slow down.
const MaxBacklog = 50_000

// Service is a running opsbot.
type Service struct {
	Cfg   *config.Config
	Log   zerolog.Logger
	Store *store.Store
	AS    *mas.AppService
	// Accounts gives each bot what it acts through: the appservice, or its
	// own login (client mode).
	Accounts *accounts.Accounts
	Bots     *bots.Manager
	Outbox   *outbox.Outbox
	// Describe publishes the bots' command descriptions (MSC4391).
	Describe *describe.Publisher
	Pipeline *pipeline.Pipeline
	Path     *stages.Path
	// E2EE is nil when encryption.enabled is false; Identity too, and when
	// encryption.cross_signing is false.
	E2EE         *e2ee.Manager
	Identity     *identity.Manager
	Verification *verification.Manager
	Metrics      *metrics.Metrics

	// term is this process's leadership, once it has one.
	term atomic.Pointer[leader.Term]
	// accepting is set while this process is the leader and records
	// transactions (it is then ready); running once everything is started
	// and events are handled.
	accepting atomic.Bool
	running   atomic.Bool
	started   time.Time
	version   string
	// deliveries are the signed webhook deliveries taken (replay guard).
	deliveries *skills.Seen
	// answered remembers who was told, this hour, why a command was
	// refused for its device (kept across reloads).
	answered *skills.Seen
	// versions is the homeserver's /versions answer at start-up.
	versions *mautrix.RespVersions

	// engine is swapped by Reload; handlers in flight finish on the old one.
	engine atomic.Pointer[skills.Engine]
	// skills returns the Go skills compiled in, new ones on every call
	// (an engine is set up at start and at every reload).
	skills func() []skills.Skill
	memory skills.MemoryStore
	// ConfigPath is re-read by Reload.
	ConfigPath string
	// syncs are the client-mode bots' /sync intakes, running while this
	// process leads; cancelSyncs stops them.
	syncs       sync.WaitGroup
	cancelSyncs context.CancelFunc
	// stopSchedules stops the cron jobs of the current engine.
	reloadMu      sync.Mutex
	stopSchedules context.CancelFunc
	workCtx       context.Context
}

// New builds a service without touching the network or the database, so
// that every config error (unknown skill, bad regex, bad skill settings)
// refuses start-up before anything happens.
//
// goSkills returns the Go skills compiled into the binary, new instances on
// every call; the external skills of the config are added to them.
func New(cfg *config.Config, log zerolog.Logger, goSkills func() []skills.Skill, version string) (*Service, error) {
	s := &Service{Cfg: cfg, Log: log, started: time.Now(), version: version, deliveries: skills.NewSeen(), answered: skills.NewSeen()}
	// The pipeline, built last, reports to the metrics: the sources read it
	// at each scrape.
	s.Metrics = metrics.New(metrics.Options{
		Version: version,
		Backlog: func() int64 {
			if s.Pipeline == nil {
				return 0
			}
			return s.Pipeline.Backlog()
		},
		Ready: s.accepting.Load,
		Parked: func() (int, time.Duration) {
			if s.Pipeline == nil || !s.running.Load() {
				return 0, 0
			}
			return s.Pipeline.ParkedStats()
		},
	})
	var err error
	s.Store, err = store.Open(cfg.Database, log)
	if err != nil {
		return nil, err
	}
	s.AS, err = mas.CreateFull(mas.CreateOpts{
		Registration:     cfg.Registration(),
		HomeserverDomain: cfg.Homeserver.Domain,
		HomeserverURL:    cfg.Homeserver.Address,
		StateStore:       store.NewCachedStateStore(s.Store.DB),
	})
	if err != nil {
		return nil, fmt.Errorf("setting up the appservice client: %w", err)
	}
	s.AS.Log = log.With().Str("component", "mautrix").Logger()
	// The outbox retries with its own policy (retry_after_ms included);
	// mautrix's own retries would multiply with it.
	s.AS.DefaultHTTPRetries = 0
	s.AS.HTTPClient.Timeout = 60 * time.Second
	// Every pipeline worker talks to the homeserver at once: keep a warm
	// connection for each instead of Go's default two (measured: 13-16 new
	// TCP connections per transaction otherwise; docs/performance.md).
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 32
	s.AS.HTTPClient.Transport = transport
	s.Accounts, err = accounts.New(accounts.Options{AS: s.AS, Bots: cfg.Bots, Domain: cfg.Homeserver.Domain,
		HomeserverURL: cfg.Homeserver.Address, Sessions: s.Store, Transport: transport, PickleKey: []byte(cfg.Encryption.PickleKey),
		Log: log.With().Str("component", "accounts").Logger()})
	if err != nil {
		return nil, fmt.Errorf("setting up the client-mode bots: %w", err)
	}

	memory := &memoryRouter{db: s.Store, inState: cfg.Memory.InRoomState, state: statememory.New(s.Accounts.Client, s.firstBotIn)}
	s.Bots = bots.New(bots.Options{Config: cfg, AS: s.AS, Accounts: s.Accounts, Profiles: s.Store, MoveMemory: memory.move,
		Log: log.With().Str("component", "bots").Logger()})
	if cfg.Encryption.Enabled {
		s.newEncryption()
	}
	// The outbox comes after encryption, which gives it its Encryptor
	// (none, not a nil *e2ee.Manager, when encryption is off).
	var encryptor outbox.Encryptor
	if s.E2EE != nil {
		encryptor = s.E2EE
	}
	s.Outbox = outbox.New(outbox.Options{AS: s.AS, Accounts: s.Accounts, Encryptor: encryptor, Fence: termFence{s}, Observe: s.Metrics.ObserveSend,
		Log: log.With().Str("component", "outbox").Logger()})
	s.memory = memory
	s.skills = goSkills
	engine, err := s.buildEngine(cfg)
	if err != nil {
		s.Store.Close()
		return nil, err
	}
	s.engine.Store(engine)
	s.Describe = describe.New(describe.Options{
		Store:        s.Store,
		Descriptions: func(bot id.UserID) []*cmdschema.EventContent { return s.Engine().Descriptions(bot) },
		SendState:    s.Outbox.SendState,
		JoinedRooms: func(ctx context.Context, bot id.UserID) ([]id.RoomID, error) {
			resp, err := s.Accounts.Client(bot).JoinedRooms(ctx)
			if err != nil {
				return nil, err
			}
			return resp.JoinedRooms, nil
		},
		MayPublish: func(ctx context.Context, room id.RoomID, bot id.UserID) bool {
			pl, err := s.AS.StateStore.GetPowerLevels(ctx, room)
			if err != nil || pl == nil {
				return true // not known here: the homeserver will say
			}
			return pl.GetUserLevel(bot) >= pl.GetEventLevel(event.StateMSC4391BotCommand)
		},
		Log: log.With().Str("component", "describe").Logger(),
	})
	s.Path = s.newPath()
	s.Pipeline = pipeline.New(pipeline.Options{
		Inbox:   s.inbox(),
		Handler: s.Path,
		Workers: cfg.AppService.Workers,
		Log:     log.With().Str("component", "pipeline").Logger(),
		Observe: s.Metrics.ObserveEvent,
		Recover: outbox.WithRecovery,
		OnFenced: func(err error) {
			if t := s.term.Load(); t != nil {
				t.Release(context.Background()) // ends the term: Run stops
			}
		},
	})
	return s, nil
}

// newPath lines up the stages between the inbox and the skills.
func (s *Service) newPath() *stages.Path {
	// Without encryption these stay nil interfaces, not nil pointers.
	var (
		enc      stages.Encryption
		verifier stages.Verifier
		toDevice stages.ToDevice
	)
	if s.E2EE != nil {
		enc, verifier, toDevice = s.E2EE, s.Verification, s.E2EE
	}
	return stages.NewPath(stages.PathOptions{
		Stages: []stages.Stage{
			stages.NewState(s.AS.StateStore),
			stages.NewMembership(s.Bots),
			stages.NewCrypto(stages.CryptoOptions{
				E2EE:           enc,
				IsBot:          s.Bots.IsBot,
				DecryptWait:    time.Duration(s.Cfg.Encryption.DecryptWait),
				ReplyOnFailure: *s.Cfg.Encryption.ReplyOnFailure,
				Engine:         s.Engine,
				Observe:        s.Metrics.ObserveDecrypt,
				Log:            s.Log.With().Str("component", "crypto").Logger(),
			}),
			stages.NewVerification(verifier),
			stages.NewDescribe(s.Describe),
			stages.NewSkills(s.Engine),
		},
		ToDevice: toDevice,
		Bots:     s.Bots,
		Log:      s.Log.With().Str("component", "stages").Logger(),
		Observe:  s.Metrics.ObserveEvent,
	})
}

// inbox is the pipeline's inbox: with encryption, the done marks take the
// message indexes of the events' decryption along, in one transaction
// (e2ee/store.go says why).
func (s *Service) inbox() pipeline.Inbox {
	if s.E2EE == nil {
		return s.Store
	}
	return markingInbox{s.Store, s.E2EE.Indexes()}
}

type markingInbox struct {
	*store.Store
	indexes *e2ee.Shared
}

func (m markingInbox) MarkDone(ctx context.Context, fence store.Fence, seqs []int64) error {
	batch := m.indexes.TakeIndexes()
	err := m.DB.DoTxn(ctx, nil, func(ctx context.Context) error {
		if err := m.indexes.WriteIndexes(ctx, batch); err != nil {
			return err
		}
		return m.Store.MarkDone(ctx, fence, seqs)
	})
	if err != nil {
		m.indexes.RestoreIndexes(batch)
	}
	return err
}

// termFence is the current term for the outbox (no term yet: no sends).
type termFence struct{ s *Service }

func (f termFence) Check(ctx context.Context) error {
	t := f.s.term.Load()
	if t == nil {
		return errors.New("not the leader yet")
	}
	return t.Check(ctx)
}

// processStart is about when the process started (this package's
// initialisation), for the start-up time in the log.
var processStart = time.Now()

// Run starts opsbot and blocks until ctx is cancelled, then shuts down:
// intake stops first, in-flight handlers get drainTimeout to finish, and
// whatever is left stays in the inbox for the next leader.
//
// The listener answers from the start (health, and a retryable 503 for
// transactions), but only the leader handles events: on Postgres several
// replicas may run, and all but one stand by, not ready (appservice/leader).
func (s *Service) Run(ctx context.Context, drainTimeout time.Duration) error {
	defer s.Store.Close()
	listener, err := net.Listen("tcp", s.Cfg.AppService.Listen)
	if err != nil {
		return fmt.Errorf("appservice.listen: %w", err)
	}
	server := newServer(s.Handler())
	serveErr := make(chan error, 1)
	go func() { serveErr <- server.Serve(guard(listener)) }()
	defer server.Close()
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	if s.Cfg.Metrics.Listen != "" {
		if err := s.Metrics.Serve(workCtx, s.Cfg.Metrics.Listen, s.Log.With().Str("component", "metrics").Logger()); err != nil {
			return fmt.Errorf("metrics.listen: %w", err)
		}
	}

	elector := leader.New(leader.Options{DB: s.Store.DB, Service: s.Cfg.AppService.ID, Lease: time.Duration(s.Cfg.Leader.Lease),
		Log: s.Log.With().Str("component", "leader").Logger()})
	term, err := elector.Acquire(ctx)
	if err != nil {
		if ctx.Err() != nil {
			s.Log.Info().Msg("Stopped while standing by")
			return nil
		}
		return fmt.Errorf("leader election: %w", err)
	}
	s.term.Store(term)
	s.Metrics.Leader.Set(1)
	s.Metrics.LeaderEpoch.Set(float64(term.Epoch()))
	s.Log.Info().Int64("epoch", term.Epoch()).Msg("This opsbot is the leader")

	if err := s.start(ctx, workCtx, term); err != nil {
		if ctx.Err() != nil {
			s.Log.Info().Err(err).Msg("Stopped during start-up")
			term.Release(context.Background())
			return nil
		}
		return err
	}
	s.running.Store(true)
	s.Log.Info().Str("listen", listener.Addr().String()).Str("bots", s.Bots.Describe()).
		Dur("start_up", time.Since(processStart)).Msg("opsbot is running")

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		return fmt.Errorf("HTTP listener: %w", err)
	case err := <-term.Lost():
		// Another replica leads now (or will, once the lease runs out):
		// stop at once rather than drain. What was not finished stays in
		// the inbox for it; sends already under way end by themselves.
		s.accepting.Store(false)
		s.running.Store(false)
		s.Metrics.Leader.Set(0)
		s.Log.Error().Err(err).Msg("Lost leadership; stopping")
		stopWork()
		s.syncs.Wait()
		s.Pipeline.Wait()
		// If the term is still ours in the database (we stood down on our
		// own), hand over at once; a newer term refuses this.
		term.Release(context.Background())
		return fmt.Errorf("lost leadership: %w", err)
	}
	s.Log.Info().Msg("Shutting down: no new transactions; finishing events in progress")
	s.accepting.Store(false)
	if s.cancelSyncs != nil {
		s.cancelSyncs()
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = server.Shutdown(shutdownCtx)
	drainCtx, cancelDrain := context.WithTimeout(context.Background(), drainTimeout)
	s.Pipeline.Drain(drainCtx)
	if drainCtx.Err() != nil {
		s.Log.Warn().Int64("left", s.Pipeline.Backlog()).Msg("Drain timeout: unhandled events stay in the inbox for the next leader")
	}
	cancelDrain()
	s.running.Store(false)
	stopWork()
	s.syncs.Wait()
	s.Pipeline.Wait()
	if s.E2EE != nil {
		s.E2EE.Wait()
	}
	term.Release(context.Background())
	s.Metrics.Leader.Set(0)
	s.Log.Info().Msg("Stopped; handed leadership over")
	return nil
}

// start brings the leader up: schema, homeserver, bots; then it records
// transactions (and says it is ready) while the encryption devices start,
// and then the pipeline handles events, first what an earlier leader left.
func (s *Service) start(ctx, workCtx context.Context, term *leader.Term) error {
	if err := s.Store.Upgrade(ctx); err != nil {
		return err
	}
	if err := s.AS.StateStore.(*store.CachedStateStore).Upgrade(ctx); err != nil {
		return fmt.Errorf("migrating the state store: %w", err)
	}
	s.Log.Info().Str("type", s.Cfg.Database.Type).Msg("Database ready")
	if err := s.waitForHomeserver(ctx); err != nil {
		return err
	}
	if s.E2EE != nil {
		if err := s.replaceRequestedDevices(ctx); err != nil {
			return err
		}
	}
	if err := s.Accounts.Login(ctx); err != nil {
		return err
	}
	if err := s.Bots.Start(ctx); err != nil {
		return err
	}
	if err := s.Pipeline.Start(workCtx, term); err != nil {
		return fmt.Errorf("picking up unfinished events: %w", err)
	}
	// Transactions are recorded from now on, but handled only once the
	// devices are up: key delivery is found out from what they carry.
	s.accepting.Store(true)
	if s.E2EE != nil {
		if err := s.startEncryption(ctx, workCtx); err != nil {
			return err
		}
	}
	// Client-mode bots' events come in from now on (their devices are up).
	s.startSyncs(workCtx, term)
	s.Pipeline.Open()
	go s.Store.PruneLoop(workCtx, s.Log)
	s.workCtx = workCtx
	s.reloadMu.Lock()
	s.startSchedules(s.Engine())
	s.reloadMu.Unlock()
	go s.Describe.Run(workCtx)
	s.Describe.RequestAll(s.Bots.IDs())
	return nil
}

// BotID returns the user ID of a configured bot localpart.
func (s *Service) BotID(localpart string) id.UserID {
	return id.NewUserID(localpart, s.Cfg.Homeserver.Domain)
}
