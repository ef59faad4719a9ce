package appservice

import (
	"context"
	"errors"

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
		// With a password the next start logs in again (as the same
		// device, its keys uploaded again if they went with it): stand
		// down so that it happens now, by the supervisor's restart or a
		// standby, rather than leave the bot deaf.
		password, _ := s.Accounts.Password(bot)
		opts.StopOnLostLogin = password != ""
		in := intake.NewSync(opts)
		s.syncs.Go(func() {
			err := in.Run(ctx, term)
			switch {
			case err == nil || ctx.Err() != nil:
				return
			case errors.Is(err, intake.ErrLoginLost):
				s.Log.Error().Err(err).Stringer("bot", bot).Msg("The bot's login ended; stopping so that the next start logs in again")
			default:
				s.Log.Error().Err(err).Stringer("bot", bot).Msg("Stopped the bot's /sync: this process does not lead any more")
			}
			term.Release(context.Background())
		})
	}
}
