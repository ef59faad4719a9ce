package accounts_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/accounts"
	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/store"
	"github.com/opsbot/opsbot/appservice/store/storetest"
)

const bot = id.UserID("@helper:example.org")

// homeserver is a fake client-server API with one account: its password,
// its devices' tokens, the login flows it offers, and what it was asked.
type homeserver struct {
	mu       sync.Mutex
	password string
	flows    []string
	tokens   map[string]string // token -> device
	owner    string            // whose tokens these are
	// failLogins answers that many logins 502 first.
	failLogins int
	logins     []map[string]any
	next       int
}

func newHomeserver() *homeserver {
	return &homeserver{password: "right", flows: []string{"m.login.password"}, tokens: map[string]string{}, owner: string(bot)}
}

func (h *homeserver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	defer h.mu.Unlock()
	reply := func(status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/_matrix/client/v3/login":
		var flows []map[string]string
		for _, f := range h.flows {
			flows = append(flows, map[string]string{"type": f})
		}
		reply(200, map[string]any{"flows": flows})
	case r.Method == http.MethodPost && r.URL.Path == "/_matrix/client/v3/login":
		var req map[string]any
		_ = json.NewDecoder(r.Body).Decode(&req)
		h.logins = append(h.logins, req)
		if h.failLogins > 0 {
			h.failLogins--
			reply(502, map[string]string{"errcode": "M_UNKNOWN", "error": "bad gateway"})
			return
		}
		if req["password"] != h.password {
			reply(403, map[string]string{"errcode": "M_FORBIDDEN", "error": "Invalid password"})
			return
		}
		device, _ := req["device_id"].(string)
		if device == "" {
			h.next++
			device = fmt.Sprintf("NEW%d", h.next)
		}
		token := fmt.Sprintf("token-%s-%d", device, len(h.logins))
		h.tokens[token] = device
		reply(200, map[string]string{"user_id": string(bot), "access_token": token, "device_id": device})
	case r.Method == http.MethodGet && r.URL.Path == "/_matrix/client/v3/account/whoami":
		device, ok := h.tokens[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
		if !ok {
			reply(401, map[string]string{"errcode": "M_UNKNOWN_TOKEN", "error": "Unknown token"})
			return
		}
		reply(200, map[string]string{"user_id": h.owner, "device_id": device})
	default:
		reply(404, map[string]string{"errcode": "M_UNRECOGNIZED"})
	}
}

func (h *homeserver) loginCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.logins)
}

type fixture struct {
	hs        *homeserver
	url       string
	store     *store.Store
	pickleKey []byte
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	hs := newHomeserver()
	srv := httptest.NewServer(hs)
	t.Cleanup(srv.Close)
	st := storetest.Open(t, "sqlite")
	return &fixture{hs: hs, url: srv.URL, store: st, pickleKey: []byte("pickle key for the tests, 32 b")}
}

// login runs one start's login of a client-mode bot with account acc.
func (f *fixture) login(t *testing.T, acc config.Account) (*accounts.Accounts, error) {
	t.Helper()
	a, err := accounts.New(accounts.Options{
		Bots:          []config.Bot{{Localpart: "helper", Account: &acc}},
		Domain:        "example.org",
		HomeserverURL: f.url,
		Sessions:      f.store,
		PickleKey:     f.pickleKey,
		Log:           zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return a, a.Login(ctx)
}

// A bot logs in with its password once; later starts reuse the stored
// login; a login that was revoked is made again for the same device.
func TestLoginOnceKeepDevice(t *testing.T) {
	f := newFixture(t)
	a, err := f.login(t, config.Account{Password: "right"})
	if err != nil {
		t.Fatal(err)
	}
	device := a.Client(bot).DeviceID
	if device == "" || f.hs.loginCount() != 1 {
		t.Fatalf("first start: device %q after %d logins", device, f.hs.loginCount())
	}
	if name := f.hs.logins[0]["initial_device_display_name"]; name != "opsbot (helper)" {
		t.Errorf("device name %v", name)
	}
	a, err = f.login(t, config.Account{Password: "right"})
	if err != nil || a.Client(bot).DeviceID != device || f.hs.loginCount() != 1 {
		t.Fatalf("second start: %v, device %q, %d logins (want the stored login reused)", err, a.Client(bot).DeviceID, f.hs.loginCount())
	}
	// Logged out elsewhere: the next start logs in again, as the same device.
	f.hs.mu.Lock()
	f.hs.tokens = map[string]string{}
	f.hs.mu.Unlock()
	a, err = f.login(t, config.Account{Password: "right"})
	if err != nil || a.Client(bot).DeviceID != device {
		t.Fatalf("after a logout: %v, device %q", err, a.Client(bot).DeviceID)
	}
	if asked := f.hs.logins[1]["device_id"]; asked != string(device) {
		t.Fatalf("logged in again asking for device %v, want %s", asked, device)
	}
	s, err := f.store.ClientSession(context.Background(), bot)
	if err != nil || s.DeviceID != device || s.AccessToken == "" {
		t.Fatalf("stored login %+v %v", s, err)
	}
	// The database holds the token encrypted with the pickle key.
	if strings.Contains(s.AccessToken, a.Client(bot).AccessToken) {
		t.Fatalf("the access token is in the database as it is: %q", s.AccessToken)
	}
	// Another pickle key cannot read it, and says so.
	f.pickleKey = []byte("another pickle key, 32 bytes lo")
	if _, err := f.login(t, config.Account{Password: "right"}); err == nil || !strings.Contains(err.Error(), "encryption.pickle_key") {
		t.Fatalf("with another pickle key: %v", err)
	}
}

// A homeserver that is down or busy is waited out; one that refuses is an
// error at once that says what to change.
func TestLoginFailures(t *testing.T) {
	t.Run("busy homeserver", func(t *testing.T) {
		f := newFixture(t)
		f.hs.failLogins = 1
		if _, err := f.login(t, config.Account{Password: "right"}); err != nil || f.hs.loginCount() != 2 {
			t.Fatalf("%v after %d logins", err, f.hs.loginCount())
		}
	})
	for _, tc := range []struct {
		name  string
		setup func(h *homeserver)
		acc   config.Account
		want  []string
	}{
		{"wrong password", nil, config.Account{Password: "wrong"}, []string{"M_FORBIDDEN", "account.password", "OPSBOT_BOT_HELPER_PASSWORD"}},
		{"no password login (MAS)", func(h *homeserver) { h.flows = []string{"m.login.sso", "m.login.token"} },
			config.Account{Password: "right"}, []string{"does not offer password login", "m.login.sso", "access_token", "OPSBOT_BOT_HELPER_ACCESS_TOKEN"}},
		{"unknown token, no password", nil, config.Account{AccessToken: "nope"}, []string{"M_UNKNOWN_TOKEN", "OPSBOT_BOT_HELPER_ACCESS_TOKEN"}},
		{"someone else's token", func(h *homeserver) { h.tokens["theirs"] = "DEV"; h.owner = "@alice:example.org" },
			config.Account{AccessToken: "theirs"}, []string{"belongs to @alice:example.org"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			if tc.setup != nil {
				tc.setup(f.hs)
			}
			start := time.Now()
			_, err := f.login(t, tc.acc)
			if err == nil {
				t.Fatal("login succeeded")
			}
			for _, want := range append(tc.want, "bots[0] (@helper:example.org, client mode)") {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q: %v", want, err)
				}
			}
			if time.Since(start) > 5*time.Second {
				t.Errorf("a refusal was retried for %v", time.Since(start))
			}
		})
	}
}

// A configured token is used as it is, its device taken from /whoami; when
// it stops working, the password logs in again.
func TestConfiguredToken(t *testing.T) {
	f := newFixture(t)
	f.hs.tokens["given"] = "GIVEN"
	a, err := f.login(t, config.Account{AccessToken: "given", Password: "right"})
	if err != nil || a.Client(bot).DeviceID != "GIVEN" || f.hs.loginCount() != 0 {
		t.Fatalf("%v, device %q, %d logins", err, a.Client(bot).DeviceID, f.hs.loginCount())
	}
	delete(f.hs.tokens, "given")
	a, err = f.login(t, config.Account{AccessToken: "given", Password: "right"})
	if err != nil || a.Client(bot).DeviceID != "GIVEN" || f.hs.logins[0]["device_id"] != "GIVEN" {
		t.Fatalf("after the token was revoked: %v, device %q, logins %v", err, a.Client(bot).DeviceID, f.hs.logins)
	}
	// check reads the same without logging in.
	s, _ := f.store.ClientSession(context.Background(), bot)
	detail, err := accounts.Check(context.Background(), f.url, bot, config.Bot{Localpart: "helper", Account: &config.Account{Password: "right"}}, s, f.pickleKey)
	if err != nil || !strings.Contains(detail, "its stored login works (device GIVEN)") || f.hs.loginCount() != 1 {
		t.Fatalf("check: %q %v after %d logins", detail, err, f.hs.loginCount())
	}
}
