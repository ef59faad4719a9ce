package e2ee

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/id"
)

// fakeHomeserver records requests and answers each with the handler's JSON.
type fakeHomeserver struct {
	mu   sync.Mutex
	reqs []*http.Request
	body []map[string]any
}

func (f *fakeHomeserver) start(t *testing.T, answer func(r *http.Request) string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		var body map[string]any
		_ = json.Unmarshal(data, &body)
		f.mu.Lock()
		f.reqs = append(f.reqs, r)
		f.body = append(f.body, body)
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, answer(r))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// With MSC4190 the device is created through the appservice API, and every
// later request acts for it with the appservice token, naming user and device.
func TestOpenDeviceMSC4190(t *testing.T) {
	hs := &fakeHomeserver{}
	base := hs.start(t, func(*http.Request) string { return `{"device_keys":{}}` })
	m := New(Options{MSC4190: true})
	client, err := mautrix.NewClient(base, "@bot:example.org", "as-token")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.openDevice(context.Background(), client, "OPSBOTABCDEFGHIJ", "opsbot (bot)"); err != nil {
		t.Fatal(err)
	}
	if _, err := client.QueryKeys(context.Background(), &mautrix.ReqQueryKeys{DeviceKeys: map[id.UserID]mautrix.DeviceIDList{"@bot:example.org": nil}}); err != nil {
		t.Fatal(err)
	}
	put, query := hs.reqs[0], hs.reqs[1]
	if put.Method != http.MethodPut || put.URL.Path != "/_matrix/client/v3/devices/OPSBOTABCDEFGHIJ" ||
		put.URL.Query().Get("user_id") != "@bot:example.org" || put.Header.Get("Authorization") != "Bearer as-token" ||
		hs.body[0]["display_name"] != "opsbot (bot)" {
		t.Fatalf("device creation: %s %s %v auth %q body %v", put.Method, put.URL.Path, put.URL.Query(), put.Header.Get("Authorization"), hs.body[0])
	}
	want := url.Values{"user_id": {"@bot:example.org"}, "device_id": {"OPSBOTABCDEFGHIJ"}, "org.matrix.msc3202.device_id": {"OPSBOTABCDEFGHIJ"}}
	for k, v := range want {
		if query.URL.Query().Get(k) != v[0] {
			t.Fatalf("later request %s: %s=%q, want %q", query.URL.Path, k, query.URL.Query().Get(k), v[0])
		}
	}
	if query.Header.Get("Authorization") != "Bearer as-token" {
		t.Fatalf("later request authorised with %q, want the appservice token", query.Header.Get("Authorization"))
	}
}

// Without MSC4190 the device comes from appservice login with a fixed ID,
// and the device's own token replaces the appservice token.
func TestOpenDeviceLogin(t *testing.T) {
	hs := &fakeHomeserver{}
	base := hs.start(t, func(r *http.Request) string {
		return `{"user_id":"@bot:example.org","device_id":"OPSBOTABCDEFGHIJ","access_token":"device-token"}`
	})
	client, err := mautrix.NewClient(base, "@bot:example.org", "as-token")
	if err != nil {
		t.Fatal(err)
	}
	if err := New(Options{}).openDevice(context.Background(), client, "OPSBOTABCDEFGHIJ", "opsbot (bot)"); err != nil {
		t.Fatal(err)
	}
	login := hs.body[0]
	if hs.reqs[0].URL.Path != "/_matrix/client/v3/login" || login["type"] != "m.login.application_service" || login["device_id"] != "OPSBOTABCDEFGHIJ" {
		t.Fatalf("login request %s %v", hs.reqs[0].URL.Path, login)
	}
	if client.AccessToken != "device-token" || client.SetAppServiceUserID {
		t.Fatalf("after login: token %q, appservice user ID %v", client.AccessToken, client.SetAppServiceUserID)
	}
}

// A homeserver that hands out another device ID than the fixed one is an
// error: the keys in the database belong to the requested device.
func TestOpenDeviceWrongID(t *testing.T) {
	hs := &fakeHomeserver{}
	base := hs.start(t, func(*http.Request) string {
		return `{"user_id":"@bot:example.org","device_id":"OTHER","access_token":"device-token"}`
	})
	client, _ := mautrix.NewClient(base, "@bot:example.org", "as-token")
	err := New(Options{}).openDevice(context.Background(), client, "OPSBOTABCDEFGHIJ", "opsbot (bot)")
	if err == nil || err.Error() != "the homeserver gave device OTHER, not the requested OPSBOTABCDEFGHIJ" {
		t.Fatalf("err = %v", err)
	}
}

// A homeserver with next-generation auth (MAS) refuses appservice login and
// wants MSC4190: the error says which setting fixes it.
func TestOpenDeviceMSC4190Required(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"errcode":"IO.ELEMENT.MSC4190.M_APPSERVICE_LOGIN_UNSUPPORTED","error":"This appservice has MSC4190 enabled, so appservice login cannot be used."}`)
	}))
	t.Cleanup(srv.Close)
	client, _ := mautrix.NewClient(srv.URL, "@bot:example.org", "as-token")
	client.DefaultHTTPRetries = 0
	err := New(Options{}).openDevice(context.Background(), client, "OPSBOTABCDEFGHIJ", "opsbot (bot)")
	if err == nil || !strings.Contains(err.Error(), "set encryption.msc4190: true") {
		t.Fatalf("err = %v, want it to name encryption.msc4190", err)
	}
}

func TestInParallel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var running, most atomic.Int32
	var got []context.Context
	var mu sync.Mutex
	err := inParallel(ctx, 40, func(c context.Context, i int) error {
		n := running.Add(1)
		defer running.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		time.Sleep(5 * time.Millisecond)
		mu.Lock()
		got = append(got, c)
		mu.Unlock()
		return nil
	})
	if err != nil || len(got) != 40 || most.Load() > startConcurrency || most.Load() < 2 {
		t.Fatalf("err=%v ran=%d at most %d at once", err, len(got), most.Load())
	}
	// What f starts may outlive the loop: its context is the caller's.
	for _, c := range got {
		if c.Err() != nil {
			t.Fatal("f's context ended with the loop")
		}
	}
	boom := errors.New("boom")
	var ran atomic.Int32
	err = inParallel(ctx, 100, func(_ context.Context, i int) error {
		ran.Add(1)
		if i == 3 {
			return boom
		}
		time.Sleep(5 * time.Millisecond)
		return nil
	})
	if !errors.Is(err, boom) || ran.Load() == 100 {
		t.Fatalf("err=%v, ran %d of 100 after an error", err, ran.Load())
	}
}

// A restart uses the device's stored access token instead of logging in
// again, as long as the homeserver takes it for the device.
func TestResumeDeviceWithStoredToken(t *testing.T) {
	const bot, dev = id.UserID("@bot:example.org"), id.DeviceID("OPSBOTABCDEFGHIJ")
	var mu sync.Mutex
	logins, valid := 0, "" // the homeserver's login count and the token it takes
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/_matrix/client/v3/login":
			logins++
			valid = fmt.Sprintf("token-%d", logins)
			fmt.Fprintf(w, `{"user_id":%q,"device_id":%q,"access_token":%q}`, bot, dev, valid)
		case r.URL.Path == "/_matrix/client/v3/account/whoami" && valid != "" && r.Header.Get("Authorization") == "Bearer "+valid:
			fmt.Fprintf(w, `{"user_id":%q,"device_id":%q}`, bot, dev)
		default:
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"errcode":"M_UNKNOWN_TOKEN","error":"Unknown token"}`)
		}
	}))
	t.Cleanup(srv.Close)
	state := func() (int, string) {
		mu.Lock()
		defer mu.Unlock()
		return logins, valid
	}

	db := openDB(t, "sqlite")
	store := crypto.NewSQLCryptoStore(db, dbutil.ZeroLogger(zerolog.Nop()), bot.String(), "", []byte(testPickleKey))
	m := New(Options{ASToken: "as-token"})
	start := func(existed bool) *mautrix.Client {
		t.Helper()
		client, err := mautrix.NewClient(srv.URL, bot, "as-token")
		if err != nil {
			t.Fatal(err)
		}
		if err := m.resumeDevice(context.Background(), client, store, dev, existed, "opsbot (bot)"); err != nil {
			t.Fatal(err)
		}
		return client
	}
	check := func(c *mautrix.Client, wantLogins int, when string) {
		t.Helper()
		n, token := state()
		if n != wantLogins || c.AccessToken != token || c.DeviceID != dev {
			t.Fatalf("%s: %d logins (want %d), token %q device %q", when, n, wantLogins, c.AccessToken, c.DeviceID)
		}
	}
	check(start(false), 1, "first start")
	check(start(true), 1, "restart") // the stored token, no login
	mu.Lock()
	valid = "" // logged out behind opsbot's back
	mu.Unlock()
	check(start(true), 2, "restart after a logout")
	check(start(true), 2, "restart after the new login")
}
