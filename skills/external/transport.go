package external

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/retryafter"

	"github.com/opsbot/opsbot/skills/auth"
	"github.com/opsbot/opsbot/skills/retry"
)

// Sign returns the X-Opsbot-Signature value for a body:
// "sha256=" + hex(HMAC-SHA256(secret, body)).
func Sign(secret string, body []byte) string { return auth.SignHMAC(secret, body) }

// Verify checks an X-Opsbot-Signature value in constant time, for skills
// written in Go.
func Verify(secret string, body []byte, signature string) bool {
	return auth.VerifyHMAC(secret, body, signature)
}

// call POSTs the body through the circuit breaker, retrying as configured.
// It returns the status (200 or 204) and body of a usable answer, or an
// error saying why there is none.
func (s *Skill) call(ctx context.Context, body []byte, delivery string, ts int64) (int, []byte, error) {
	log := s.logger(ctx)
	state, retryIn := s.breaker.allow(s.now())
	switch state {
	case stateOpen:
		return 0, nil, fmt.Errorf("external skill %s is %w (circuit open after %d failures; retrying in %ds)",
			s.c.Name, ErrUnavailable, s.breaker.threshold, int((retryIn+time.Second-1)/time.Second))
	case stateBusy:
		return 0, nil, fmt.Errorf("external skill %s is %w (circuit open after %d failures; a trial call is under way)",
			s.c.Name, ErrUnavailable, s.breaker.threshold)
	}
	trial := state == stateTrial
	status, answer, outcome, err := s.attempts(ctx, log, body, delivery, ts)
	opened, closed := s.breaker.record(s.now(), outcome, trial)
	if opened {
		s.log.Warn().Err(err).Int("failures", s.breaker.threshold).Dur("open_for", s.breaker.openFor).
			Bool("after_trial", trial).Msg("External skill unavailable: circuit open, calls fail at once until it is tried again")
	}
	if closed {
		s.log.Warn().Msg("External skill available again: circuit closed")
	}
	return status, answer, err
}

// busyError is an answer worth retrying (5xx, 429), with the wait the
// skill asked for in Retry-After (429 and 503 only; 0 if none).
type busyError struct {
	status int
	wait   time.Duration
}

func (e *busyError) Error() string { return statusText(e.status) }

// attempts makes the first request and the retries.
func (s *Skill) attempts(ctx context.Context, log *zerolog.Logger, body []byte, delivery string, ts int64) (status int, answer []byte, outcome int, err error) {
	tries := 1 + max(s.c.Retries, 0)
	attempt := 0
	err = retry.Do(ctx, retry.Policy{
		Min: s.backoff, Attempts: tries, Sleep: s.sleep,
		Classify: func(err error) (bool, time.Duration) {
			if ctx.Err() != nil {
				return false, 0 // reported below
			}
			var busy *busyError
			if errors.As(err, &busy) {
				return true, busy.wait
			}
			return true, 0 // no answer: a network error
		},
	}, func() error {
		attempt++
		start := s.now()
		var header http.Header
		var postErr error
		status, answer, header, postErr = s.post(ctx, body, delivery, ts)
		log.Debug().Str("delivery", delivery).Int("attempt", attempt).Int("status", status).AnErr("error", postErr).
			Dur("took", s.now().Sub(start)).Msg("External skill request")
		switch {
		case postErr != nil:
			return postErr
		case status >= 500 || status == http.StatusTooManyRequests:
			return &busyError{status: status, wait: retryWait(status, header)}
		}
		return nil
	})
	if ctx.Err() != nil {
		// The handler ran out of time or opsbot is stopping: the skill
		// may be fine, so the breaker is not told.
		return 0, nil, callCancelled, fmt.Errorf("external skill %s: gave up after %d attempt(s): %w", s.c.Name, attempt, context.Cause(ctx))
	}
	if err != nil {
		after := ""
		if tries > 1 {
			after = fmt.Sprintf(" after %d attempts", tries)
		}
		if g, ok := err.(*retry.Error); ok {
			err = g.Last
		}
		if busy := (*busyError)(nil); errors.As(err, &busy) {
			return 0, nil, callFailed, fmt.Errorf("external skill %s: %s answered %s%s", s.c.Name, s.target, statusText(busy.status), after)
		}
		return 0, nil, callFailed, fmt.Errorf("external skill %s: no answer from %s%s: %w", s.c.Name, s.target, after, err)
	}
	switch {
	case status == http.StatusOK || status == http.StatusNoContent:
		return status, answer, callOK, nil
	case status >= 300 && status < 400:
		return 0, nil, callOK, fmt.Errorf("external skill %s: %s answered %s (redirects are not followed: set url to the final address)",
			s.c.Name, s.target, statusText(status))
	case status >= 400 && status < 500:
		log.Debug().Str("delivery", delivery).Bytes("answer", truncate(answer, 512)).Msg("External skill refused the request")
		return 0, nil, callOK, fmt.Errorf("external skill %s: %s answered %s (not retried: the skill refused the request; check its url and secret)",
			s.c.Name, s.target, statusText(status))
	default:
		return 0, nil, callOK, fmt.Errorf("external skill %s %w: status %s (expected 200 with {\"actions\":[...]} or 204)",
			s.c.Name, ErrNonsense, statusText(status))
	}
}

// retryWait is how long a skill answering 429 or 503 asked to be left
// alone (Retry-After), at most MaxRetryAfter; 0 when it did not say.
func retryWait(status int, header http.Header) time.Duration {
	if status != http.StatusTooManyRequests && status != http.StatusServiceUnavailable {
		return 0
	}
	if wait := retryafter.Parse(header.Get("Retry-After"), 0); wait > 0 {
		return min(wait, MaxRetryAfter)
	}
	return 0
}

// post makes one request. err is set only when there is no HTTP answer.
func (s *Skill) post(ctx context.Context, body []byte, delivery string, ts int64) (int, []byte, http.Header, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(s.c.Timeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.c.URL, bytes.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "opsbot-external-skill/1")
	req.Header.Set(HeaderSignature, Sign(s.c.Secret, body))
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
	req.Header.Set(HeaderSkill, s.c.Name)
	req.Header.Set(HeaderDelivery, delivery)
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, nil, s.transportError(ctx, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswerBytes+1))
	if err != nil {
		return 0, nil, nil, s.transportError(ctx, fmt.Errorf("reading the answer: %w", err))
	}
	// An answer over MaxAnswerBytes is kept one byte too long: ParseAnswer
	// calls it nonsense (not a network problem, so it is not retried).
	return resp.StatusCode, data, resp.Header, nil
}

// transportError turns a client error into a short one: no URL (it may
// hold credentials in its query), and "timed out after" for timeouts.
func (s *Skill) transportError(ctx context.Context, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("timed out after %s", time.Duration(s.c.Timeout))
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err
	}
	return err
}

func statusText(code int) string {
	if t := http.StatusText(code); t != "" {
		return strconv.Itoa(code) + " " + t
	}
	return strconv.Itoa(code)
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

// logger is the handler's logger (with room and event) if the engine gave
// one, else the skill's.
func (s *Skill) logger(ctx context.Context) *zerolog.Logger {
	if l := zerolog.Ctx(ctx); l.GetLevel() != zerolog.Disabled {
		return l
	}
	return &s.log
}
