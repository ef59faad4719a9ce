package appservice

import (
	"context"

	"github.com/opsbot/opsbot/appservice/intake"
	"github.com/opsbot/opsbot/appservice/leader"
)

// startSyncs starts the /sync intake of every client-mode bot under term:
// only the leader syncs, and a sync that finds its term over stops and ends
// the term here too, as a fenced done mark does.
func (s *Service) startSyncs(ctx context.Context, term *leader.Term) {
	ctx, s.cancelSyncs = context.WithCancel(ctx)
	for _, bot := range s.Accounts.ClientBots() {
		for _, outcome := range []string{"ok", "error", "store_error"} {
			s.Metrics.ClientSyncs.WithLabelValues(bot.String(), outcome).Add(0)
		}
		opts := intake.SyncOptions{
			Client:     s.Accounts.Client(bot),
			Store:      s.Store,
			Deliver:    s.Pipeline.Deliver,
			Overloaded: func() bool { return s.Pipeline.Backlog() > MaxBacklog },
			Log:        s.Log.With().Str("component", "sync").Logger(),
			Observe: func(outcome string, _ int) {
				s.Metrics.ClientSyncs.WithLabelValues(bot.String(), outcome).Inc()
			},
		}
		if s.E2EE != nil {
			opts.DeviceInfo = s.E2EE.ApplyDeviceInfo
		}
		in := intake.NewSync(opts)
		s.syncs.Go(func() {
			if err := in.Run(ctx, term); err != nil && ctx.Err() == nil {
				s.Log.Error().Err(err).Stringer("bot", bot).Msg("Stopped the bot's /sync: this process does not lead any more")
				term.Release(context.Background())
			}
		})
	}
}
