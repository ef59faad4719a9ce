// Package outbox performs skill actions as the right bot user. Every send
// carries a transaction ID derived from what triggered it, so a send retried
// after a timeout or a crash is de-duplicated by the homeserver. Homeserver
// errors that can pass (rate limits, 5xx, network) are retried with backoff,
// honouring retry_after_ms; errors that cannot (forbidden, bad request) are
// returned at once.
package outbox

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/retryafter"
	"maunium.net/go/mautrix"
	mas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/accounts"
	"github.com/opsbot/opsbot/appservice/leader"
	"github.com/opsbot/opsbot/skills/retry"
)

// ErrNotLeader is returned for a send this process may no longer make.
var ErrNotLeader = errors.New("this opsbot is no longer the leader")

// ErrEncryptedRoom is returned for a plaintext send into an encrypted room.
var ErrEncryptedRoom = errors.New("the room is encrypted and this bot cannot encrypt: refusing to send plaintext")

// Encryptor encrypts content for a room as a bot; nil while E2EE is off.
type Encryptor interface {
	Encrypt(ctx context.Context, bot id.UserID, room id.RoomID, evtType event.Type, content any) (event.Type, any, error)
}

// Fence is the leadership term sends are made under (leader.Term): a
// process that is no longer the leader must not send.
type Fence interface {
	Check(ctx context.Context) error
}

// Options configure an Outbox.
type Options struct {
	// AS gives the state store (is a room encrypted?) and, unless
	// Accounts is set, acts for every bot.
	AS *mas.AppService
	// Accounts, if set, gives each bot what it acts through (client-mode
	// bots have their own login).
	Accounts *accounts.Accounts
	// Encryptor encrypts sends into encrypted rooms; nil while E2EE is off
	// (such sends are then refused).
	Encryptor Encryptor
	// Fence, if set, is checked before every attempt to send or redact.
	Fence Fence
	Log   zerolog.Logger
	// Backoff bounds: the first wait, and the longest single wait; zero
	// means the default (1 s, and 60 s).
	MinBackoff, MaxBackoff time.Duration
	// Observe, if set, is told the outcome of each send attempt.
	Observe func(op string, err error, took time.Duration)
}

// Outbox sends as bot users, each through its account (appservice/accounts).
type Outbox struct {
	opts Options
}

// New returns an outbox; its backoff defaults to 1 s doubling to 60 s.
func New(opts Options) *Outbox {
	if opts.MinBackoff == 0 {
		opts.MinBackoff = time.Second
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = time.Minute
	}
	if opts.Accounts == nil {
		opts.Accounts = accounts.ForAppService(opts.AS)
	}
	return &Outbox{opts: opts}
}

// Send sends a message event as bot. The context bounds the total time
// spent, retries included.
func (o *Outbox) Send(ctx context.Context, bot id.UserID, room id.RoomID, evtType event.Type, content any, txnID string) (id.EventID, error) {
	if evtType == event.EventMessage {
		safe, err := safeMessage(content)
		if err != nil {
			return "", err
		}
		content = safe
	}
	encrypted, err := o.opts.AS.StateStore.IsEncrypted(ctx, room)
	if err != nil {
		return "", fmt.Errorf("checking whether %s is encrypted: %w", room, err)
	}
	if encrypted && evtType != event.EventReaction {
		// Reactions stay unencrypted in Matrix so that relations work.
		if o.opts.Encryptor == nil {
			return "", ErrEncryptedRoom
		}
		evtType, content, err = o.opts.Encryptor.Encrypt(ctx, bot, room, evtType, content)
		if err != nil {
			return "", fmt.Errorf("encrypting: %w", err)
		}
	}
	marked, err := withMarker(content, txnID)
	if err != nil {
		return "", err
	}
	// A send whose outcome is unknown (opsbot crashed during it, or the
	// request failed after reaching the homeserver) may have created the
	// event: look for it before sending again, since a homeserver that
	// restarted, or whose client went away mid-request, may not recognise
	// the transaction ID (Dendrite keeps them in memory only).
	trig, check := recovering(ctx)
	var resp *mautrix.RespSendEvent
	err = o.retry(ctx, "send", func() error {
		if check {
			prev, err := o.alreadySent(ctx, bot, room, txnID, trig)
			if err != nil {
				return err
			}
			if prev != "" {
				o.opts.Log.Info().Stringer("room_id", room).Stringer("event_id", prev).Msg("An earlier attempt of this send had reached the homeserver; not sending it again")
				resp = &mautrix.RespSendEvent{EventID: prev}
				return nil
			}
		}
		sctx, cancel := attempt(ctx)
		defer cancel()
		var err error
		resp, err = o.opts.Accounts.Actor(bot).SendMessageEvent(sctx, room, evtType, marked, mautrix.ReqSendEvent{TransactionID: txnID, DontEncrypt: true})
		check = err != nil
		return err
	})
	if err != nil {
		return "", err
	}
	return resp.EventID, nil
}

// Redact redacts an event as bot.
func (o *Outbox) Redact(ctx context.Context, bot id.UserID, room id.RoomID, target id.EventID, reason, txnID string) (id.EventID, error) {
	var resp *mautrix.RespSendEvent
	err := o.retry(ctx, "redact", func() error {
		sctx, cancel := attempt(ctx)
		defer cancel()
		var err error
		resp, err = o.opts.Accounts.Actor(bot).RedactEvent(sctx, room, target, mautrix.ReqRedact{Reason: reason, TxnID: txnID})
		return err
	})
	if err != nil {
		return "", err
	}
	return resp.EventID, nil
}

// attemptTimeout bounds one request to the homeserver.
const attemptTimeout = time.Minute

// attempt is the context of one request: not cut off when ctx is cancelled
// (a stop, a lost leadership), because a send cut off mid-request may
// still create the event while the homeserver forgets its transaction ID
// (Dendrite does): it ends by itself, and a later run finds it.
func attempt(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), attemptTimeout)
}

// retry runs op until it succeeds, fails permanently, or ctx ends. Each
// attempt first checks the fence: a process that is no longer the leader
// sends nothing more, and one whose term the database cannot confirm right
// now waits and asks again. Giving up on such a send would finish its
// event without its answer once the database is back; the term's lease
// decides instead, and a term that ends stops the process.
func (o *Outbox) retry(ctx context.Context, name string, op func() error) error {
	return Retry(ctx, o.opts.Log, name, o.opts.MinBackoff, o.opts.MaxBackoff, func() error {
		if o.opts.Fence != nil {
			if err := o.opts.Fence.Check(ctx); err != nil {
				if leader.Unconfirmed(err) {
					return termInDoubt{err}
				}
				return fmt.Errorf("%w: not sending (%w)", ErrNotLeader, err)
			}
		}
		start := time.Now()
		err := op()
		if o.opts.Observe != nil {
			o.opts.Observe(name, err, time.Since(start))
		}
		return err
	})
}

// termInDoubt holds a send back while the database cannot confirm the
// term (leader.Unconfirmed): neither sent nor refused, it is tried again
// every termDoubtPoll.
type termInDoubt struct{ err error }

func (d termInDoubt) Error() string { return "not sending yet: " + d.err.Error() }
func (d termInDoubt) Unwrap() error { return d.err }

const termDoubtPoll = time.Second

// Retry runs op with exponential backoff while its errors are retryable
// (see RetryAfter). It is shared with other homeserver calls made at start-up.
func Retry(ctx context.Context, log zerolog.Logger, name string, minBackoff, maxBackoff time.Duration, op func() error) error {
	err := retry.Do(ctx, retry.Policy{
		Min: minBackoff, Max: maxBackoff,
		Classify: func(err error) (bool, time.Duration) {
			wait, retryable := RetryAfter(err)
			return retryable, wait
		},
		Notify: func(attempt int, err error, wait time.Duration) {
			msg := "Homeserver request failed, retrying"
			if errors.As(err, new(termInDoubt)) {
				msg = "Not sending yet: the database has not confirmed that this opsbot still leads; asking again"
			}
			log.Warn().Err(err).Str("op", name).Int("attempt", attempt).Dur("retry_in", wait).Msg(msg)
		},
	}, op)
	if g, ok := err.(*retry.Error); ok {
		return fmt.Errorf("%s: gave up after %d attempts: %w (last error: %v)", name, g.Attempts, g.Stopped, g.Last)
	}
	return err
}

// RetryAfter classifies a homeserver error: whether it may pass on retry,
// and how long the homeserver asked us to wait (0 if it did not say).
func RetryAfter(err error) (wait time.Duration, retryable bool) {
	if errors.Is(err, ErrNotLeader) {
		return 0, false
	}
	if errors.As(err, new(termInDoubt)) {
		return termDoubtPoll, true // not doubling: the database is asked every time
	}
	var httpErr mautrix.HTTPError
	if !errors.As(err, &httpErr) {
		// Context cancellation is final; anything else without an HTTP
		// response is a network problem worth retrying.
		return 0, !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
	}
	if httpErr.Response == nil {
		return 0, true
	}
	status := httpErr.Response.StatusCode
	if status == http.StatusTooManyRequests || (httpErr.RespError != nil && httpErr.RespError.ErrCode == "M_LIMIT_EXCEEDED") {
		if httpErr.RespError != nil {
			if ms, ok := httpErr.RespError.ExtraData["retry_after_ms"].(float64); ok && ms > 0 {
				return time.Duration(ms) * time.Millisecond, true
			}
		}
		if wait := retryafter.Parse(httpErr.Response.Header.Get("Retry-After"), 0); wait > 0 {
			return wait, true
		}
		return 0, true
	}
	return 0, status >= 500 || status == http.StatusRequestTimeout
}
