package skills

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/rs/zerolog"
)

// Outcomes of a handler run, as Options.Observe is told them (the
// opsbot_skill_invocations_total metric's outcome label).
const (
	outcomeOK    = "ok"
	outcomeError = "error"
	outcomePanic = "panic"
)

// runHandler is the one way a handler runs, whatever started it (a room
// event, a cron job, a webhook call): within the handler timeout, with a
// panic caught, logged with its stack and turned into an error, the run
// observed, and a failure logged. log names the run (skill, room, event or
// webhook) and is the logger the handler finds in its context. What a
// failure means for the caller (an apology in the room, a 500) is the
// caller's; the process and the other skills carry on either way.
func (e *Engine) runHandler(ctx context.Context, skill string, log zerolog.Logger, h func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(log.WithContext(ctx), e.opts.HandlerTimeout)
	defer cancel()
	start := time.Now()
	outcome := outcomeOK
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("panic: %v", p)
				outcome = outcomePanic
				log.Error().Interface("panic", p).Str("stack", string(debug.Stack())).Msg("Skill handler panicked")
			}
		}()
		return h(ctx)
	}()
	if err != nil && outcome == outcomeOK {
		outcome = outcomeError
	}
	took := time.Since(start)
	if e.opts.Observe != nil {
		e.opts.Observe(skill, outcome, took)
	}
	if err != nil {
		log.Error().Err(err).Dur("took", took).Msg("Skill handler failed")
		return err
	}
	log.Debug().Dur("took", took).Msg("Skill handler done")
	return nil
}

// run runs the handler of a room event or a cron job; if it fails, the
// room (if any) gets a short apology, without the error text.
func (e *Engine) run(ctx context.Context, rt *route, ev *Event) {
	log := e.opts.Log.With().Str("skill", rt.skill).Stringer("room_id", ev.RoomID).
		Stringer("event_id", ev.ID).Stringer("bot", ev.Bot).Logger()
	err := e.runHandler(ctx, rt.skill, log, func(ctx context.Context) error { return rt.handler(ctx, ev) })
	if err != nil {
		e.notice(context.WithoutCancel(log.WithContext(ctx)), ev, fmt.Sprintf("Sorry, the %s skill failed while handling that. The error has been logged.", rt.skill))
	}
}

// notice sends opsbot's own words (an apology, a usage line, a hint) in
// answer to ev: a reply to a room event, a plain message otherwise.
func (e *Engine) notice(ctx context.Context, ev *Event, text string) {
	reply := ev.Reply
	if ev.Raw == nil { // cron or webhook: nothing to reply to
		if ev.RoomID == "" {
			return
		}
		reply = ev.Respond
	}
	if _, err := reply(ctx, text); err != nil {
		e.opts.Log.Error().Err(err).Stringer("room_id", ev.RoomID).Msg("Failed to send notice")
	}
}
