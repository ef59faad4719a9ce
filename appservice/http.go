package appservice

import (
	"context"
	"errors"
	"net/http"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/health"
	"github.com/opsbot/opsbot/appservice/intake"
	"github.com/opsbot/opsbot/appservice/store"
)

// Handler returns the HTTP handler of the appservice listener: the
// appservice API (intake), skill webhooks, and the health probes.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	// With client-mode bots only there is no registration: nothing may
	// push transactions.
	if s.Cfg.HasAppServiceBots() {
		s.registerIntake(mux)
	}
	mux.Handle("/skills/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.Engine().WebhookHandler(s.running.Load).ServeHTTP(w, r)
	}))
	s.registerHealth(mux)
	return mux
}

// registerIntake serves the appservice API: pushed transactions, user
// queries, ping.
func (s *Service) registerIntake(mux *http.ServeMux) {
	intake.New(intake.Options{
		HSToken:      s.Cfg.AppService.HSToken,
		MaxBodyBytes: s.Cfg.AppService.MaxBodyBytes,
		Store:        termRecorder{s},
		Deliver:      s.Pipeline.Deliver,
		IsOurUser:    func(u id.UserID) bool { return s.Bots.IsBot(u) && !s.Accounts.IsClient(u) },
		Overloaded:   func() bool { return s.Pipeline.Backlog() > MaxBacklog },
		Standby:      func() bool { return !s.accepting.Load() },
		DeviceInfo:   s.deviceInfoHandler(),
		KeysSeen:     s.keysSeen(),
		Log:          s.Log.With().Str("component", "intake").Logger(),
		Observe:      func(outcome string, _ int) { s.Metrics.Transactions.WithLabelValues(outcome).Inc() },
	}).Register(mux)
}

// registerHealth serves /healthz and /readyz.
func (s *Service) registerHealth(mux *http.ServeMux) {
	health.New(health.Options{
		CacheFor: 5 * time.Second,
		Gate: func() error {
			if !s.accepting.Load() {
				return errors.New("standing by: another opsbot is the leader, or start-up is not finished")
			}
			return nil
		},
		Log: s.Log.With().Str("component", "health").Logger(),
		Checks: []health.Check{
			{Name: "database", Run: s.Store.Ping},
			{Name: "homeserver", Run: func(ctx context.Context) error {
				_, err := s.AS.BotClient().Versions(ctx)
				return err
			}},
		},
	}).Register(mux)
}

// termRecorder records transactions under the current term: their events
// are claimed by it (and delivered to the pipeline) while it holds, and
// left unclaimed for the leader to pick up when it does not.
type termRecorder struct{ s *Service }

func (r termRecorder) RecordTransaction(ctx context.Context, txnID string, events []store.InboxEvent) ([]store.InboxEvent, bool, bool, error) {
	var fence store.Fence
	if t := r.s.term.Load(); t != nil {
		fence = t
	}
	return r.s.Store.RecordTransaction(ctx, txnID, events, fence)
}
