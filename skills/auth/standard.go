package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Standard Webhooks (standardwebhooks.com, used by Svix and a growing list
// of senders) sign the delivery's ID and time with its body, so a captured
// delivery cannot be posted again later or under another ID:
//
//	webhook-id: msg_2KWPBgLlAfxdpx2AI54pPJ85f4W
//	webhook-timestamp: 1674087231
//	webhook-signature: v1,<base64 HMAC-SHA256(key, id + "." + timestamp + "." + body)>
//
// The key is the secret's bytes after "whsec_", base64-decoded; a secret
// without that prefix is used as it is.
const (
	StandardIDHeader        = "webhook-id"
	StandardTimestampHeader = "webhook-timestamp"
	StandardSignatureHeader = "webhook-signature"
)

// ErrStaleTimestamp is a signed timestamp outside the tolerance.
var ErrStaleTimestamp = errors.New("timestamp too far from now")

// IsStandardWebhook reports whether a request is signed the Standard
// Webhooks way (it carries a webhook-signature header).
func IsStandardWebhook(h http.Header) bool { return h.Get(StandardSignatureHeader) != "" }

// CheckStandardWebhook verifies a Standard Webhooks signature and that its
// timestamp is within tolerance of now. It returns the delivery's ID, which
// the signature covers: a receiver remembers it for the tolerance window to
// refuse the same delivery twice.
func CheckStandardWebhook(secret string, h http.Header, body []byte, now time.Time, tolerance time.Duration) (id string, err error) {
	id, ts, sigs := h.Get(StandardIDHeader), h.Get(StandardTimestampHeader), h.Get(StandardSignatureHeader)
	if id == "" || ts == "" || sigs == "" {
		return "", ErrNoSignature
	}
	secs, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return "", ErrMalformedSignature
	}
	want := standardMAC(secret, id, ts, body)
	matched := false
	for _, sig := range strings.Fields(sigs) { // several while keys rotate
		b64, ok := strings.CutPrefix(sig, "v1,")
		if !ok {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(b64)
		if err == nil && hmac.Equal(got, want) {
			matched = true
		}
	}
	if !matched {
		return "", ErrWrongSignature
	}
	// Checked after the signature: an unsigned claim about time is no
	// reason to say anything more specific than "wrong signature".
	if d := now.Sub(time.Unix(secs, 0)); d > tolerance || d < -tolerance {
		return "", ErrStaleTimestamp
	}
	return id, nil
}

// SignStandardWebhook returns the webhook-signature value for a delivery
// (for senders and tests).
func SignStandardWebhook(secret, id string, ts time.Time, body []byte) string {
	return "v1," + base64.StdEncoding.EncodeToString(standardMAC(secret, id, strconv.FormatInt(ts.Unix(), 10), body))
}

func standardMAC(secret, id, ts string, body []byte) []byte {
	key := []byte(secret)
	if b64, ok := strings.CutPrefix(secret, "whsec_"); ok {
		if k, err := base64.StdEncoding.DecodeString(b64); err == nil {
			key = k
		}
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id + "." + ts + "."))
	m.Write(body)
	return m.Sum(nil)
}
