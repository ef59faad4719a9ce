package skills

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/opsbot/opsbot/skills/auth"
)

// WebhookHandler returns the HTTP handler for POST /skills/<skill>/<path>.
// active says whether this process handles work (the leader); others
// answer 503 so the sender retries.
func (e *Engine) WebhookHandler(active func() bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest, ok := strings.CutPrefix(r.URL.Path, "/skills/")
		skill, path, _ := strings.Cut(rest, "/")
		path = "/" + path
		rt, b := e.webhookRoute(skill, path)
		if !ok || rt == nil {
			writeWebhook(w, http.StatusNotFound, "no such webhook")
			return
		}
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			writeWebhook(w, http.StatusMethodNotAllowed, "use POST")
			return
		}
		log := e.opts.Log.With().Str("skill", skill).Str("webhook", path).Str("remote", r.RemoteAddr).Logger()
		// Credentials in the headers are checked before any body is read:
		// a caller without them does not get to send a megabyte.
		if err := checkWebhookHeaders(rt, r); err != nil {
			log.Warn().Err(err).Msg("Rejected webhook call")
			writeWebhook(w, http.StatusUnauthorized, err.Error())
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, rt.opts.maxBody))
		if err != nil {
			writeWebhook(w, http.StatusRequestEntityTooLarge, "body too large")
			return
		}
		now := time.Now()
		delivery, window, err := checkWebhookSignature(rt, r, body, now)
		if err != nil {
			log.Warn().Err(err).Msg("Rejected webhook call")
			writeWebhook(w, http.StatusUnauthorized, err.Error())
			return
		}
		if active != nil && !active() {
			w.Header().Set("Retry-After", "5")
			writeWebhook(w, http.StatusServiceUnavailable, "standing by; retry later")
			return
		}
		if delivery != "" {
			delivery = skill + "\x00" + path + "\x00" + delivery
			if !e.opts.Deliveries.Take(delivery, now, window) {
				log.Warn().Msg("Refused a signed webhook delivery taken before (a replay, or the sender repeating it)")
				writeWebhook(w, http.StatusConflict, "this signed delivery was already received")
				return
			}
		}
		sum := sha256.Sum256(append([]byte(path+"\x00"), body...))
		ev := e.syntheticEvent(b, rt, "", "webhook:"+hex.EncodeToString(sum[:16]))
		req := &WebhookRequest{Path: path, Header: r.Header.Clone(), Query: r.URL.Query(), Body: body}
		// A caller that hangs up does not cut the handler short; the
		// handler timeout bounds it.
		err = e.runHandler(context.WithoutCancel(r.Context()), skill, log, func(ctx context.Context) error {
			return rt.webhook(ctx, ev, req)
		})
		if err != nil {
			// The sender's retry of this delivery must get through.
			e.opts.Deliveries.Forget(delivery)
			writeWebhook(w, http.StatusInternalServerError, "the skill failed; see opsbot's log")
			return
		}
		writeWebhook(w, http.StatusOK, "")
	})
}

func (e *Engine) webhookRoute(skill, path string) (*route, *BotSpec) {
	for _, rt := range e.routes[skill] {
		if rt.kind == kindWebhook && rt.spec == path {
			if owner := e.owner(rt); owner != "" {
				return rt, e.bots[owner]
			}
		}
	}
	return nil, nil
}

// Replay windows: how far a Standard Webhooks timestamp may be from now
// (the Standard Webhooks default), and how long a signed body without a
// signed time is remembered.
const (
	ReplayTolerance  = 5 * time.Minute
	BodyReplayWindow = 24 * time.Hour
)

// checkWebhookHeaders checks what can be checked before the body is read:
// the token, and that a signature is there at all.
func checkWebhookHeaders(rt *route, r *http.Request) error {
	if rt.opts.token != "" {
		got := auth.Token(r, "token")
		if got == "" {
			return errors.New("missing token")
		}
		if !auth.TokenMatches(got, rt.opts.token) {
			return errors.New("wrong token")
		}
	}
	if rt.opts.hmacSecret != "" && !auth.IsStandardWebhook(r.Header) &&
		!strings.HasPrefix(r.Header.Get(rt.opts.hmacHeader), auth.SignaturePrefix) {
		return errors.New("missing signature header " + rt.opts.hmacHeader)
	}
	return nil
}

// checkWebhookSignature verifies the HMAC signature, if the route has one,
// in constant time, and returns what identifies the signed delivery (""
// when nothing is signed or repeats are safe) and how long to remember it.
func checkWebhookSignature(rt *route, r *http.Request, body []byte, now time.Time) (delivery string, window time.Duration, err error) {
	if rt.opts.hmacSecret == "" {
		return "", 0, nil
	}
	if auth.IsStandardWebhook(r.Header) {
		id, err := auth.CheckStandardWebhook(rt.opts.hmacSecret, r.Header, body, now, ReplayTolerance)
		// Remembered for both sides of the tolerance.
		return "id:" + id, 2 * ReplayTolerance, err
	}
	if err := auth.CheckHMAC(rt.opts.hmacSecret, body, r.Header.Get(rt.opts.hmacHeader)); err != nil {
		return "", 0, err
	}
	if rt.opts.repeatsAreSafe {
		return "", 0, nil
	}
	// Nothing but the body is signed: the same body is the same delivery,
	// whatever unsigned delivery header comes with it.
	sum := sha256.Sum256(body)
	return "body:" + hex.EncodeToString(sum[:]), BodyReplayWindow, nil
}

func writeWebhook(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if msg == "" {
		_, _ = w.Write([]byte("{}\n"))
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}
