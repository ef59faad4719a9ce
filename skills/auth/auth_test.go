package auth_test

import (
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/opsbot/opsbot/skills/auth"
)

func TestToken(t *testing.T) {
	cases := []struct {
		target, header, want string
	}{
		{"/hook", "Bearer s3cret", "s3cret"},
		{"/hook?token=from-query", "", "from-query"},
		{"/hook?token=from-query", "Bearer from-header", "from-header"}, // the header wins
		{"/hook", "Basic dXNlcjpwYXNz", ""},                             // another scheme is no token
		{"/hook", "", ""},
	}
	for _, c := range cases {
		r := httptest.NewRequest("POST", c.target, nil)
		if c.header != "" {
			r.Header.Set("Authorization", c.header)
		}
		if got := auth.Token(r, "token"); got != c.want {
			t.Errorf("%s with %q: token %q, want %q", c.target, c.header, got, c.want)
		}
	}
	r := httptest.NewRequest("GET", "/?access_token=a", nil)
	if _, ok := auth.Bearer(r); ok {
		t.Error("Bearer found a token in the query")
	}
	if got := auth.Token(r, "access_token"); got != "a" {
		t.Errorf("access_token: %q", got)
	}
}

func TestTokenMatches(t *testing.T) {
	if !auth.TokenMatches("right-token", "right-token") {
		t.Error("the right token was refused")
	}
	for _, wrong := range []string{"wrong-token", "right-toke", "right-token ", "", "RIGHT-TOKEN"} {
		if auth.TokenMatches(wrong, "right-token") {
			t.Errorf("%q accepted", wrong)
		}
	}
	if auth.TokenMatches("", "") {
		t.Error("an empty expected token matched")
	}
}

func TestHMAC(t *testing.T) {
	body := []byte(`{"alert":"disk full"}`)
	sig := auth.SignHMAC("s3cret", body)
	if !strings.HasPrefix(sig, "sha256=") || len(sig) != len("sha256=")+64 {
		t.Fatalf("signature %q", sig)
	}
	if err := auth.CheckHMAC("s3cret", body, sig); err != nil {
		t.Errorf("own signature refused: %v", err)
	}
	if !auth.VerifyHMAC("s3cret", body, "sha256="+strings.ToUpper(sig[7:])) {
		t.Error("upper-case hex refused")
	}
	cases := []struct {
		secret, body, sig string
		want              error
	}{
		{"s3cret", `{"alert":"disk ok"}`, sig, auth.ErrWrongSignature},    // another body
		{"other", string(body), sig, auth.ErrWrongSignature},              // another secret
		{"s3cret", string(body), sig[7:], auth.ErrNoSignature},            // no prefix
		{"s3cret", string(body), "", auth.ErrNoSignature},                 // no header
		{"s3cret", string(body), "sha256=zz", auth.ErrMalformedSignature}, // not hex
		{"s3cret", string(body), "sha256=", auth.ErrWrongSignature},       // empty MAC
	}
	for i, c := range cases {
		err := auth.CheckHMAC(c.secret, []byte(c.body), c.sig)
		if !errors.Is(err, c.want) {
			t.Errorf("case %d: %v, want %v", i, err, c.want)
		}
		if auth.VerifyHMAC(c.secret, []byte(c.body), c.sig) {
			t.Errorf("case %d: VerifyHMAC accepted", i)
		}
	}
}
