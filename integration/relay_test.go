package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/integration/harness"
	"github.com/opsbot/opsbot/integration/peers"
)

// relay stands in for what no homeserver here does: a homeserver that
// advertises MSC2409 and MSC3202 in /versions and pushes their fields under
// the stable names (to_device, device_lists, device_one_time_keys_count).
// Synapse, which pushes them under the unstable names without advertising
// them, runs for real in the Synapse suites. It sits between
// opsbot and Dendrite as a reverse proxy; when a bot device logs in through
// it, the relay takes note of the device's access token (Dendrite allows one
// token per device, so it cannot log in itself) and reads that device's
// /sync stream, pushing its to-device events, device-list changes and
// one-time-key counts into opsbot as transaction fields, as such a
// homeserver would. The keys are real, from real clients; only their
// transport is rerouted.
type relay struct {
	hs     *harness.Homeserver
	bot    *Opsbot
	userID string
	proxy  *httptest.Server

	mu     sync.Mutex
	token  string // the bot device's current access token
	device string
	pushed int
	n      int

	// merge makes the relay hold the device's to-device events and push
	// them inside the homeserver's next transaction that carries an
	// encrypted room event, after its room events (see mergeTransactions).
	merge  bool
	queued []map[string]any
	queueT time.Time // when the oldest queued event came
	merged int       // transactions that carried both
}

func newRelay(t *testing.T, userID string) *relay {
	return &relay{userID: userID}
}

// via starts the proxy in front of hs and returns its address for opsbot.
func (r *relay) via(t *testing.T) func(hs *harness.Homeserver) string {
	return func(hs *harness.Homeserver) string {
		r.hs = hs
		target, _ := url.Parse(hs.URL)
		p := httputil.NewSingleHostReverseProxy(target)
		p.ModifyResponse = func(resp *http.Response) error {
			if resp.Request.URL.Path == "/_matrix/client/versions" && resp.StatusCode == 200 {
				return advertiseKeyFeatures(resp)
			}
			if resp.Request.Method != "POST" || !strings.HasSuffix(resp.Request.URL.Path, "/login") || resp.StatusCode != 200 {
				return nil
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			resp.Body = io.NopCloser(bytes.NewReader(body))
			var login struct {
				UserID      string `json:"user_id"`
				DeviceID    string `json:"device_id"`
				AccessToken string `json:"access_token"`
			}
			if json.Unmarshal(body, &login) == nil && login.UserID == r.userID {
				r.mu.Lock()
				r.token, r.device = login.AccessToken, login.DeviceID
				r.mu.Unlock()
			}
			return nil
		}
		r.proxy = httptest.NewServer(p)
		t.Cleanup(r.proxy.Close)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); r.loop(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		return r.proxy.URL
	}
}

func (r *relay) current() (token, device string, bot *Opsbot) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.token, r.device, r.bot
}

func (r *relay) loop(ctx context.Context) {
	filter := `{"room":{"rooms":["!none:invalid"],"timeline":{"limit":1}},"presence":{"not_types":["*"]},"account_data":{"not_types":["*"]}}`
	since, sinceToken := "", ""
	client := &http.Client{Timeout: 30 * time.Second}
	for ctx.Err() == nil {
		token, device, bot := r.current()
		if token == "" || bot == nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if token != sinceToken { // a new login (opsbot restarted): start over
			since, sinceToken = "", token
		}
		q := url.Values{"timeout": {"1000"}, "filter": {filter}}
		if since != "" {
			q.Set("since", since)
		}
		req, _ := http.NewRequestWithContext(ctx, "GET", r.hs.URL+"/_matrix/client/v3/sync?"+q.Encode(), nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err != nil {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		var body struct {
			NextBatch   string                            `json:"next_batch"`
			ToDevice    struct{ Events []map[string]any } `json:"to_device"`
			DeviceLists *struct {
				Changed []string `json:"changed"`
				Left    []string `json:"left"`
			} `json:"device_lists"`
			OTK map[string]int `json:"device_one_time_keys_count"`
		}
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		since = body.NextBatch
		txn := map[string]any{"events": []any{}}
		for _, ev := range body.ToDevice.Events {
			ev["to_user_id"], ev["to_device_id"] = r.userID, device
		}
		if r.merge {
			r.mu.Lock()
			if len(r.queued) == 0 {
				r.queueT = time.Now()
			}
			for _, ev := range body.ToDevice.Events {
				r.queued = append(r.queued, ev)
			}
			r.mu.Unlock()
			body.ToDevice.Events = nil
			// Queued events no transaction came for in a second go alone.
			r.mu.Lock()
			if len(r.queued) > 0 && time.Since(r.queueT) > time.Second {
				body.ToDevice.Events, r.queued = r.queued, nil
			}
			r.mu.Unlock()
		}
		if len(body.ToDevice.Events) > 0 {
			txn["to_device"] = body.ToDevice.Events
		}
		if body.DeviceLists != nil && (len(body.DeviceLists.Changed) > 0 || len(body.DeviceLists.Left) > 0) {
			txn["device_lists"] = body.DeviceLists
		}
		if body.OTK != nil {
			txn["device_one_time_keys_count"] = map[string]any{r.userID: map[string]any{device: body.OTK}}
		}
		if len(txn) == 1 {
			continue
		}
		data, _ := json.Marshal(txn)
		// Like a homeserver, retry the same transaction until opsbot takes it.
		r.n++
		txnID := fmt.Sprintf("relay-%d-%d", time.Now().UnixNano(), r.n)
		for ctx.Err() == nil {
			req, _ := http.NewRequestWithContext(ctx, "PUT", bot.URL+"/_matrix/app/v1/transactions/"+txnID, bytes.NewReader(data))
			req.Header.Set("Authorization", "Bearer "+bot.Cfg.AppService.HSToken)
			resp, err := client.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					r.mu.Lock()
					r.pushed += len(body.ToDevice.Events)
					r.mu.Unlock()
					break
				}
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}

// mergeTransactions is the relay's appservice URL for the homeserver: a
// transaction with an encrypted room event waits (up to 3 s) for the bot
// device's queued to-device events, and goes to opsbot with them, room
// events first, as one transaction. That is how a homeserver pushes a
// room's first message and its room key together.
func (r *relay) mergeTransactions(t *testing.T) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(req.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		_, _, bot := r.current()
		if bot == nil {
			http.Error(w, `{"errcode":"M_UNKNOWN"}`, 503)
			return
		}
		var txn map[string]any
		if req.Method == "PUT" && json.Unmarshal(body, &txn) == nil && bytes.Contains(body, []byte(`"type":"m.room.encrypted"`)) {
			deadline := time.Now().Add(3 * time.Second)
			for time.Now().Before(deadline) {
				r.mu.Lock()
				n := len(r.queued)
				r.mu.Unlock()
				if n > 0 {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			r.mu.Lock()
			if len(r.queued) > 0 {
				txn["to_device"], r.queued = r.queued, nil
				r.merged++
			}
			r.mu.Unlock()
			body, _ = json.Marshal(txn)
		}
		fwd, _ := http.NewRequest(req.Method, bot.URL+req.URL.RequestURI(), bytes.NewReader(body))
		fwd.Header = req.Header.Clone()
		resp, err := http.DefaultClient.Do(fwd)
		if err != nil {
			http.Error(w, err.Error(), 502)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// advertiseKeyFeatures adds MSC2409 and MSC3202 to a /versions answer.
func advertiseKeyFeatures(resp *http.Response) error {
	var versions map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&versions); err != nil {
		return err
	}
	resp.Body.Close()
	features, _ := versions["unstable_features"].(map[string]any)
	if features == nil {
		features = map[string]any{}
	}
	features["org.matrix.msc2409"], features["org.matrix.msc3202"] = true, true
	versions["unstable_features"] = features
	data, err := json.Marshal(versions)
	if err != nil {
		return err
	}
	resp.Body = io.NopCloser(bytes.NewReader(data))
	resp.ContentLength = int64(len(data))
	resp.Header.Set("Content-Length", strconv.Itoa(len(data)))
	return nil
}

// TestAppserviceKeyDelivery: a homeserver that advertises MSC2409 and
// MSC3202 gets appservice key delivery from encryption.mode auto without a
// probe, and keys under the stable field names reach the bot's device.
func TestAppserviceKeyDelivery(t *testing.T) {
	enc := "encryption:\n  enabled: true\n  pickle_key: " + config.RandomToken() + "\n"
	r := newRelay(t, botID)
	w := newWorldVia(t, "sqlite", defaultBots, enc, r.via(t))
	r.mu.Lock()
	r.bot = w.Bot
	r.mu.Unlock()
	w.Bot.WaitForLog(t, wait, `"mode":"appservice"`, "Encryption key delivery mode", "advertises MSC2409 and MSC3202")

	alice := w.HS.RegisterUser(t, "alice")
	nio := peers.StartNio(t)
	nio.Login(w.HS.URL, alice.ID, alice.Password, "ALICENIO")
	room := nio.CreateRoom(true, botID)
	botJoined(t, alice, room, botID)
	for i := 0; i < 3; i++ {
		want := fmt.Sprintf("through transactions %d", i)
		nio.Send(room, "!echo "+want)
		if m := nio.WaitMessage(room, botID, wait); m.Body != want || !m.Encrypted {
			t.Fatalf("round %d: got %+v", i, m)
		}
	}
	// A new device of alice reaches the bot as a device-list change.
	nio2 := peers.StartNio(t)
	nio2.Login(w.HS.URL, alice.ID, alice.Password, "ALICENIO2")
	nio.Send(room, "!echo second device")
	if m := nio2.WaitMessage(room, botID, wait); m.Body != "second device" || !m.Encrypted {
		t.Fatalf("second device: got %+v", m)
	}
	r.mu.Lock()
	pushed := r.pushed
	r.mu.Unlock()
	if pushed == 0 {
		t.Fatal("the relay pushed no to-device events: the test did not exercise appservice mode")
	}
	if strings.Contains(w.Bot.Log(), "Receiving encryption keys through /sync") {
		t.Fatal("appservice mode must not run a /sync loop")
	}
}

// A room's first message and its room key in one transaction, the key
// after the message, and one worker: the key's queue goes first, and the
// message is answered decrypted without waiting.
func TestKeyAndMessageInOneTransaction(t *testing.T) {
	r := newRelay(t, botID)
	r.merge = true
	enc := "encryption:\n  enabled: true\n  pickle_key: " + config.RandomToken() + "\n"
	w := newWorldWith(t, worldOptions{DB: "sqlite", Bots: defaultBots, Via: r.via(t), PublicURL: r.mergeTransactions(t),
		Extra: enc, Workers: 1})
	r.mu.Lock()
	r.bot = w.Bot
	r.mu.Unlock()
	w.Bot.WaitForLog(t, wait, `"mode":"appservice"`, "Encryption key delivery mode")

	alice := w.HS.RegisterUser(t, "alice")
	nio := peers.StartNio(t)
	nio.Login(w.HS.URL, alice.ID, alice.Password, "ALICENIO")
	for i := 0; i < 3; i++ {
		room := nio.CreateRoom(true, botID)
		botJoined(t, alice, room, botID)
		start := time.Now()
		nio.Send(room, "!echo together")
		m := nio.WaitMessage(room, botID, wait)
		if m.Body != "together" || !m.Encrypted {
			t.Fatalf("room %d: answered %+v", i, m)
		}
		if took := time.Since(start); took > 3*time.Second+2*time.Second {
			t.Fatalf("room %d: answered after %v", i, took)
		}
		if n := w.Bot.CountLog("Room waits for the room key of this message", room); n != 0 {
			t.Errorf("room %d waited for a key that came in the same transaction", i)
		}
	}
	r.mu.Lock()
	merged := r.merged
	r.mu.Unlock()
	if merged == 0 {
		t.Fatal("no transaction carried a message and its key together: the test did not exercise the case")
	}
	t.Logf("%d transactions carried a message and its key together", merged)
}
