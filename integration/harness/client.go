package harness

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// RequestTimeout bounds every request the t-taking helpers make (a /sync
// long-poll gets its poll time on top).
const RequestTimeout = 30 * time.Second

// HTTPError is a non-2xx answer from the homeserver.
type HTTPError struct {
	Method, Path string
	Status       int
	ErrCode      string // the Matrix errcode, e.g. M_FORBIDDEN, if any
	Message      string // the Matrix error text, if any
	Body         []byte
}

func (e *HTTPError) Error() string {
	if e.ErrCode != "" {
		return fmt.Sprintf("%s %s: HTTP %d %s: %s", e.Method, e.Path, e.Status, e.ErrCode, e.Message)
	}
	return fmt.Sprintf("%s %s: HTTP %d: %.300s", e.Method, e.Path, e.Status, e.Body)
}

// Do sends an unauthenticated request to the homeserver. path is absolute
// ("/_matrix/client/versions") and may carry a query. body, if not nil, is
// sent as JSON (a []byte or json.RawMessage is sent as is); out, if not nil,
// receives the JSON answer. A non-2xx answer is returned as *HTTPError.
func (hs *Homeserver) Do(ctx context.Context, method, path string, body, out any) error {
	return hs.do(ctx, method, path, "", body, out)
}

func (hs *Homeserver) do(ctx context.Context, method, path, token string, body, out any) error {
	var rd io.Reader
	if body != nil {
		switch b := body.(type) {
		case []byte:
			rd = bytes.NewReader(b)
		case json.RawMessage:
			rd = bytes.NewReader(b)
		default:
			data, err := json.Marshal(body)
			if err != nil {
				return fmt.Errorf("%s %s: %w", method, path, err)
			}
			rd = bytes.NewReader(data)
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, hs.URL+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hs.client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: reading answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		he := &HTTPError{Method: method, Path: path, Status: resp.StatusCode, Body: data}
		var me struct {
			ErrCode string `json:"errcode"`
			Error   string `json:"error"`
		}
		if json.Unmarshal(data, &me) == nil {
			he.ErrCode, he.Message = me.ErrCode, me.Error
		}
		return he
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decoding answer: %w (%.300s)", method, path, err, data)
		}
	}
	return nil
}

// User is one Matrix device driven over the client-server API: an access
// token plus its own /sync position and event buffer.
type User struct {
	ID          string // @local:server
	AccessToken string
	DeviceID    string
	// Password is set for users made by RegisterUser, Login and their
	// error-returning forms (for Login, or for user-interactive auth such as
	// cross-signing uploads).
	Password string

	hs         *Homeserver
	masquerade string // appservice users: the ?user_id= to act as

	txn  atomic.Int64
	sync syncState
}

// Homeserver returns the server the user lives on.
func (u *User) Homeserver() *Homeserver { return u.hs }

// Do sends an authenticated request as u; see Homeserver.Do for the
// arguments. It returns errors instead of failing the test.
func (u *User) Do(ctx context.Context, method, path string, body, out any) error {
	if u.masquerade != "" {
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		path += sep + "user_id=" + url.QueryEscape(u.masquerade)
	}
	return u.hs.do(ctx, method, path, u.AccessToken, body, out)
}

// MustDo is Do with a RequestTimeout deadline that fails the test on error.
func (u *User) MustDo(t testing.TB, method, path string, body, out any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), RequestTimeout)
	defer cancel()
	if err := u.Do(ctx, method, path, body, out); err != nil {
		t.Fatalf("harness: %s: %v", u.ID, err)
	}
}

// Get is MustDo with GET.
func (u *User) Get(t testing.TB, path string, out any) {
	t.Helper()
	u.MustDo(t, http.MethodGet, path, nil, out)
}

// RegisterUser creates the account @localpart:ServerName through the shared-
// secret registration API (/_synapse/admin/v1/register) and returns it logged
// in, its /sync position set to now. The device is logged out at cleanup so
// test users do not pile up devices.
func (hs *Homeserver) RegisterUser(t testing.TB, localpart string) *User {
	t.Helper()
	return hs.register(t, localpart, false)
}

// RegisterAdmin is RegisterUser for a server admin (for the /_dendrite/admin
// and /_synapse/admin APIs).
func (hs *Homeserver) RegisterAdmin(t testing.TB, localpart string) *User {
	t.Helper()
	return hs.register(t, localpart, true)
}

func (hs *Homeserver) register(t testing.TB, localpart string, admin bool) *User {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), RequestTimeout)
	defer cancel()
	u, err := hs.registerAccount(ctx, localpart, "harness-pw-"+localpart, admin)
	if err != nil {
		t.Fatalf("harness: registering %s: %v", localpart, err)
	}
	hs.prepareUser(t, u)
	return u
}

// RegisterAccount is RegisterUser for programs that are not tests: it
// creates @localpart:ServerName with the given password (an admin if admin
// is set) and returns it logged in, its /sync position set to now, or an
// error (an *HTTPError with ErrCode M_USER_IN_USE if the account exists).
// Nothing logs the device out; call Logout when done.
func (hs *Homeserver) RegisterAccount(ctx context.Context, localpart, password string, admin bool) (*User, error) {
	u, err := hs.registerAccount(ctx, localpart, password, admin)
	if err != nil {
		return nil, err
	}
	if err := u.initialSync(ctx); err != nil {
		return nil, fmt.Errorf("initial sync of %s: %w", u.ID, err)
	}
	return u, nil
}

func (hs *Homeserver) registerAccount(ctx context.Context, localpart, password string, admin bool) (*User, error) {
	const path = "/_synapse/admin/v1/register"
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	if err := hs.Do(ctx, http.MethodGet, path, nil, &nonce); err != nil {
		return nil, err
	}
	kind := "notadmin"
	if admin {
		kind = "admin"
	}
	mac := hmac.New(sha1.New, []byte(hs.SharedSecret))
	mac.Write([]byte(strings.Join([]string{nonce.Nonce, localpart, password, kind}, "\x00")))
	var res struct {
		UserID      string `json:"user_id"`
		AccessToken string `json:"access_token"`
		DeviceID    string `json:"device_id"`
	}
	err := hs.Do(ctx, http.MethodPost, path, map[string]any{
		"nonce":    nonce.Nonce,
		"username": localpart,
		"password": password,
		"admin":    admin,
		"mac":      hex.EncodeToString(mac.Sum(nil)),
	}, &res)
	if err != nil {
		return nil, err
	}
	return &User{ID: res.UserID, AccessToken: res.AccessToken, DeviceID: res.DeviceID, Password: password, hs: hs}, nil
}

// Login logs in to an existing account with its password and returns the new
// device (a second client of the same person), its /sync position set to now.
// deviceID may be empty for a server-chosen one.
func (hs *Homeserver) Login(t testing.TB, localpart, password, deviceID string) *User {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), RequestTimeout)
	defer cancel()
	u, err := hs.login(ctx, localpart, password, deviceID)
	if err != nil {
		t.Fatalf("harness: login of %s: %v", localpart, err)
	}
	hs.prepareUser(t, u)
	return u
}

// LoginAccount is Login for programs that are not tests: it returns the new
// device, its /sync position set to now, or an error (an *HTTPError with
// ErrCode M_FORBIDDEN for a wrong password or an unknown account). Nothing
// logs the device out; call Logout when done.
func (hs *Homeserver) LoginAccount(ctx context.Context, localpart, password, deviceID string) (*User, error) {
	u, err := hs.login(ctx, localpart, password, deviceID)
	if err != nil {
		return nil, err
	}
	if err := u.initialSync(ctx); err != nil {
		return nil, fmt.Errorf("initial sync of %s: %w", u.ID, err)
	}
	return u, nil
}

func (hs *Homeserver) login(ctx context.Context, localpart, password, deviceID string) (*User, error) {
	req := map[string]any{
		"type":       "m.login.password",
		"identifier": map[string]any{"type": "m.id.user", "user": localpart},
		"password":   password,
	}
	if deviceID != "" {
		req["device_id"] = deviceID
	}
	var res struct {
		UserID      string `json:"user_id"`
		AccessToken string `json:"access_token"`
		DeviceID    string `json:"device_id"`
	}
	if err := hs.Do(ctx, http.MethodPost, "/_matrix/client/v3/login", req, &res); err != nil {
		return nil, err
	}
	return &User{ID: res.UserID, AccessToken: res.AccessToken, DeviceID: res.DeviceID, Password: password, hs: hs}, nil
}

// NewDevice logs u's account in again: another device of the same person.
func (u *User) NewDevice(t testing.TB) *User {
	t.Helper()
	local := strings.TrimPrefix(strings.SplitN(u.ID, ":", 2)[0], "@")
	return u.hs.Login(t, local, u.Password, "")
}

// AppServiceUser returns a User that calls the API with an application
// service's as_token, acting as userID through ?user_id= (Dendrite then
// reports the dummy device "AS_Device"). With an empty userID it acts as the
// appservice's sender_localpart user without ?user_id= (Dendrite reports a
// device named like the localpart), and ID and DeviceID stay empty. The user
// must exist: Dendrite creates the sender at start-up; others need a
// m.login.application_service registration. It is not logged out at
// cleanup, and its /sync position starts at its first wait.
func (hs *Homeserver) AppServiceUser(asToken, userID string) *User {
	u := &User{ID: userID, AccessToken: asToken, masquerade: userID, hs: hs}
	if userID != "" {
		u.DeviceID = "AS_Device"
	}
	return u
}

// prepareUser takes the initial sync position and registers the logout.
func (hs *Homeserver) prepareUser(t testing.TB, u *User) {
	t.Helper()
	t.Cleanup(func() {
		if !hs.Running() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := u.Logout(ctx); err != nil {
			t.Logf("harness: logout of %s (%s): %v", u.ID, u.DeviceID, err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), RequestTimeout)
	defer cancel()
	if err := u.initialSync(ctx); err != nil {
		t.Fatalf("harness: initial sync of %s: %v", u.ID, err)
	}
}

// Logout ends the device's session (POST /logout). Already logged-out
// devices are not an error.
func (u *User) Logout(ctx context.Context) error {
	err := u.Do(ctx, http.MethodPost, "/_matrix/client/v3/logout", map[string]any{}, nil)
	if he, ok := err.(*HTTPError); ok && he.ErrCode == "M_UNKNOWN_TOKEN" {
		return nil
	}
	return err
}

// WhoAmI returns the user ID and device ID the homeserver sees for u's token.
func (u *User) WhoAmI(t testing.TB) (userID, deviceID string) {
	t.Helper()
	var res struct {
		UserID   string `json:"user_id"`
		DeviceID string `json:"device_id"`
	}
	u.Get(t, "/_matrix/client/v3/account/whoami", &res)
	return res.UserID, res.DeviceID
}

// nextTxnID returns a transaction ID unique for this User value.
func (u *User) nextTxnID() string {
	return fmt.Sprintf("harness.%d.%d", time.Now().UnixNano(), u.txn.Add(1))
}

// pathEscape escapes a room ID, alias, user ID or event ID for a URL path.
func pathEscape(s string) string { return url.PathEscape(s) }
