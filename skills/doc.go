// Package skills is the runtime that opsbot's skills plug into: the Skill
// interface, the Router a skill registers its matchers on, the Event a
// handler receives (with its actions: reply, react, edit, redact, ...), and
// the per-skill, per-room Memory.
//
// A skill is a package of its own with a constructor returning a Skill: the
// built-in ones under skills/builtin, anyone else's in their own module
// (appservice/cli builds a binary with them). A skill imports this package
// and no part of the host. Handlers never talk HTTP to the homeserver: every action goes through
// opsbot's outbox, which sends as the right bot user, encrypts where needed,
// and de-duplicates retries.
//
// The runtime has these roles, each in its own file:
//
//   - skill.go: the contract. What a skill provides (Skill, Handler) and what
//     the host provides to it (Host, Config, Sender, Media, Rooms, Memory).
//   - register.go: registration. The Router on which a skill's Setup
//     registers commands, regexes, parse patterns, event types, a fallback,
//     cron jobs and webhooks, with their Options (Help, InRooms, ...).
//   - engine.go: set-up. NewEngine checks the bots' skill lists and config
//     sections, runs every Setup, and orders each bot's routes.
//   - dispatch.go: dispatch. Handle walks a room event through each bot's
//     routes, applies the one permission guard (permits) and the rate
//     limit, and hands matches to the runner.
//   - match_command.go, match_parse.go: matchers. Command patterns
//     ("remind {duration} {text...}") and parse patterns ("in {n:d}
//     minutes"); regexes are Go's own.
//   - run.go: the runner. Every handler, of a room event, a cron job or a
//     webhook, runs through runHandler: the handler timeout, a panic logged
//     with its stack, the outcome observed and logged.
//   - cron.go: cron jobs on the leader, recorded in a ScheduleStore so that
//     a restart neither repeats nor replays runs (schedules are parsed by
//     skills/internal/cron).
//   - webhook.go: the HTTP side of webhooks: routing, authentication
//     (skills/auth), the leader check.
//   - event.go: the Event a handler receives and its actions (reply, react,
//     edit, redact, send files, ...).
//   - decode.go: strict decoding of a skill's config section.
//   - catalog.go: the event types opsbot handles, the source of
//     docs/events.md.
//
// Helpers that the host shares: skills/retry (backoff), skills/auth (tokens
// and HMAC signatures); skills/skilltest for a skill's own tests.
package skills
