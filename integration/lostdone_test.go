package integration

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opsbot/opsbot/integration/peers"
)

// Synapse can lose a to-device event it pushes to an appservice when two
// cross in flight, and the two sides' m.key.verification.done cross by
// design (seen in CI). Here a front between Synapse and opsbot drops the
// person's done every time: the verification still ends as done on the
// bot's side, once both MACs were checked, and both sides trust each other.
// What fails the test is a bot that saw their done or never ended.
func TestVerificationWithoutTheirDone(t *testing.T) {
	var dropped atomic.Int32
	var mu sync.Mutex
	var target *url.URL
	front := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		to := target
		mu.Unlock()
		if to == nil {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/transactions/") {
			body, _ := io.ReadAll(r.Body)
			body = dropDone(t, body, &dropped)
			r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		}
		httputil.NewSingleHostReverseProxy(to).ServeHTTP(w, r)
	})
	frontURL := serveFront(t, front)

	w := newWorldWith(t, worldOptions{HS: synapseHS, DB: "sqlite", Bots: trustBots, Extra: trustConfig(""), PublicURL: frontURL})
	mu.Lock()
	target, _ = url.Parse(w.Bot.URL)
	mu.Unlock()
	w.Bot.WaitForLog(t, wait, "Bot identity is cross-signed", `"bot":"`+botID+`"`)
	dev := botDevice(t, w.Bot, botID)

	alice := w.HS.RegisterUser(t, "alice")
	a := peers.StartJS(t)
	a.Login(w.HS.URL, alice.ID, alice.Password, "ALICEJS")
	a.BootstrapCrossSigning(alice.Password)
	room := a.CreateRoom(true, botID)
	botJoined(t, alice, room, botID)

	verifyBot(t, w, a, dev, "") // the person sees it done, the bot logs it done
	// The bot ended it without the person's done: the front dropped it, or
	// Synapse lost it on its own (the fault this test is about; seen in CI).
	// Either way the bot never saw it, which is what the test needs.
	w.Bot.WaitForLog(t, wait, "Verification done", "the other side's done never arrived")
	if dropped.Load() == 0 {
		t.Log("Synapse did not push the person's m.key.verification.done at all; the front had nothing to drop")
	}
}

// dropDone removes m.key.verification.done from a transaction's to-device
// events (stable and MSC2409 names).
func dropDone(t *testing.T, body []byte, dropped *atomic.Int32) []byte {
	var txn map[string]json.RawMessage
	if json.Unmarshal(body, &txn) != nil {
		return body
	}
	for _, key := range []string{"to_device", "de.sorunome.msc2409.to_device"} {
		var events []json.RawMessage
		if json.Unmarshal(txn[key], &events) != nil {
			continue
		}
		kept := events[:0]
		for _, ev := range events {
			var head struct {
				Type string `json:"type"`
			}
			_ = json.Unmarshal(ev, &head)
			if head.Type == "m.key.verification.done" {
				dropped.Add(1)
				continue
			}
			kept = append(kept, ev)
		}
		txn[key], _ = json.Marshal(kept)
	}
	out, err := json.Marshal(txn)
	if err != nil {
		t.Errorf("re-encoding a transaction: %v", err)
		return body
	}
	return out
}
