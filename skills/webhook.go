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
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, rt.opts.maxBody))
		if err != nil {
			writeWebhook(w, http.StatusRequestEntityTooLarge, "body too large")
			return
		}
		log := e.opts.Log.With().Str("skill", skill).Str("webhook", path).Str("remote", r.RemoteAddr).Logger()
		if err := checkWebhookAuth(rt, r, body); err != nil {
			log.Warn().Err(err).Msg("Rejected webhook call")
			writeWebhook(w, http.StatusUnauthorized, err.Error())
			return
		}
		if active != nil && !active() {
			w.Header().Set("Retry-After", "5")
			writeWebhook(w, http.StatusServiceUnavailable, "standing by; retry later")
			return
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

// checkWebhookAuth verifies the token and/or HMAC signature in constant time.
func checkWebhookAuth(rt *route, r *http.Request, body []byte) error {
	if rt.opts.token != "" {
		got := auth.Token(r, "token")
		if got == "" {
			return errors.New("missing token")
		}
		if !auth.TokenMatches(got, rt.opts.token) {
			return errors.New("wrong token")
		}
	}
	if rt.opts.hmacSecret != "" {
		err := auth.CheckHMAC(rt.opts.hmacSecret, body, r.Header.Get(rt.opts.hmacHeader))
		if errors.Is(err, auth.ErrNoSignature) {
			return errors.New("missing signature header " + rt.opts.hmacHeader)
		}
		return err
	}
	return nil
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
