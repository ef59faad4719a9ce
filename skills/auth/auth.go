// Package auth checks the credentials of HTTP requests made to opsbot and
// signs the requests opsbot makes: shared bearer tokens and HMAC-SHA256
// body signatures ("sha256=<hex>", GitHub's X-Hub-Signature-256 style).
// Every comparison takes constant time, so that a caller cannot learn a
// secret byte by byte from how long a refusal takes.
package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
)

// Bearer returns the token of an "Authorization: Bearer <token>" header;
// ok is false when there is no such header.
func Bearer(r *http.Request) (token string, ok bool) {
	return strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
}

// Token returns the bearer token or, when the request has no bearer
// header, the query parameter param ("" when neither is there). Some
// senders (homeservers of old, webhook services) can only set a query.
func Token(r *http.Request, param string) string {
	if token, ok := Bearer(r); ok {
		return token
	}
	return r.URL.Query().Get(param)
}

// TokenMatches compares a presented token with the expected one in
// constant time. An empty expected token matches nothing.
func TokenMatches(got, want string) bool {
	return want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// SignaturePrefix starts every signature value.
const SignaturePrefix = "sha256="

// The ways a signature check fails.
var (
	ErrNoSignature        = errors.New("missing signature")
	ErrMalformedSignature = errors.New("malformed signature")
	ErrWrongSignature     = errors.New("wrong signature")
)

// SignHMAC returns "sha256=" + hex(HMAC-SHA256(secret, body)).
func SignHMAC(secret string, body []byte) string {
	return SignaturePrefix + hex.EncodeToString(mac(secret, body))
}

// CheckHMAC verifies a signature value made by SignHMAC (hex digits of
// either case) and says what is wrong with it: ErrNoSignature when it does
// not start with "sha256=", ErrMalformedSignature when the rest is not hex,
// ErrWrongSignature when it signs something else.
func CheckHMAC(secret string, body []byte, signature string) error {
	sig, ok := strings.CutPrefix(signature, SignaturePrefix)
	if !ok {
		return ErrNoSignature
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return ErrMalformedSignature
	}
	if !hmac.Equal(got, mac(secret, body)) {
		return ErrWrongSignature
	}
	return nil
}

// VerifyHMAC reports whether signature is body's signature with secret.
func VerifyHMAC(secret string, body []byte, signature string) bool {
	return CheckHMAC(secret, body, signature) == nil
}

func mac(secret string, body []byte) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return m.Sum(nil)
}
