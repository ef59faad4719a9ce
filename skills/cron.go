package skills

import (
	"context"
	"fmt"
	"time"

	"maunium.net/go/mautrix/id"
)

// ScheduleStore records when each cron job last ran, so that a restart
// neither repeats a run nor replays every run it missed.
type ScheduleStore interface {
	LastRun(ctx context.Context, key string) (time.Time, error)
	SetLastRun(ctx context.Context, key string, at time.Time) error
}

// RunSchedules runs the skills' cron jobs until ctx ends. Call it on the
// leader only. After downtime, each job runs once for its latest missed
// slot, then on schedule.
func (e *Engine) RunSchedules(ctx context.Context) {
	for _, b := range e.orderedBots() {
		for _, name := range b.Skills {
			for i, rt := range e.routes[name] {
				if rt.kind != kindCron || e.owner(rt) != b.ID {
					continue
				}
				key := fmt.Sprintf("%s|%d|%s", rt.skill, i, rt.spec)
				go e.cronLoop(ctx, b, rt, key)
			}
		}
	}
}

func (e *Engine) cronLoop(ctx context.Context, b *BotSpec, rt *route, key string) {
	loc := rt.opts.location
	if loc == nil {
		loc = time.UTC
	}
	log := e.opts.Log.With().Str("skill", rt.skill).Str("cron", rt.spec).Logger()
	var last time.Time
	if e.opts.Schedules != nil {
		var err error
		if last, err = e.opts.Schedules.LastRun(ctx, key); err != nil {
			log.Error().Err(err).Msg("Could not read when the job last ran; starting from now")
		}
	}
	now := time.Now().In(loc)
	var next time.Time
	if last.IsZero() {
		next = rt.cron.Next(now)
	} else {
		next = rt.cron.Next(last.In(loc))
		for n := rt.cron.Next(next); !n.IsZero() && !n.After(now); n = rt.cron.Next(n) {
			next = n // skip to the latest missed slot: run it once
		}
	}
	for !next.IsZero() {
		wait := time.Until(next)
		if wait > 0 {
			log.Debug().Time("next", next).Msg("Cron job scheduled")
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		e.runCron(ctx, b, rt, key, next)
		if e.opts.Schedules != nil {
			if err := e.opts.Schedules.SetLastRun(ctx, key, next); err != nil && ctx.Err() == nil {
				log.Error().Err(err).Msg("Could not record the cron run")
			}
		}
		next = rt.cron.Next(next)
		if now := time.Now().In(loc); next.Before(now) {
			next = rt.cron.Next(now) // a long run overlapped slots: skip them
		}
	}
}

func (e *Engine) runCron(ctx context.Context, b *BotSpec, rt *route, key string, slot time.Time) {
	rooms := rt.opts.rooms
	if len(rooms) == 0 {
		rooms = []id.RoomID{""}
	}
	for _, room := range rooms {
		ev := e.syntheticEvent(b, rt, room, fmt.Sprintf("cron:%s:%d", key, slot.Unix()))
		e.run(ctx, rt, ev)
	}
}
