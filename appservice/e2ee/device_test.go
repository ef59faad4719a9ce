package e2ee

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"maunium.net/go/mautrix"
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
