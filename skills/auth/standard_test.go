package auth

import (
	"errors"
	"net/http"
	"testing"
	"time"
)

func TestStandardWebhook(t *testing.T) {
	// The example of the Standard Webhooks specification.
	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	h := http.Header{}
	h.Set(StandardIDHeader, "msg_p5jXN8AQM9LWM0D4loKWxJek")
	h.Set(StandardTimestampHeader, "1614265330")
	h.Set(StandardSignatureHeader, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
	body := []byte(`{"test": 2432232314}`)
	at := time.Unix(1614265330, 0)
	if id, err := CheckStandardWebhook(secret, h, body, at.Add(time.Minute), 5*time.Minute); err != nil || id != "msg_p5jXN8AQM9LWM0D4loKWxJek" {
		t.Fatalf("the spec's example: %q, %v", id, err)
	}
	if got := SignStandardWebhook(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", at, body); got != h.Get(StandardSignatureHeader) {
		t.Fatalf("signed %q", got)
	}
	for name, tc := range map[string]struct {
		mutate func(h http.Header) []byte
		now    time.Time
		want   error
	}{
		"old delivery replayed":  {func(http.Header) []byte { return body }, at.Add(10 * time.Minute), ErrStaleTimestamp},
		"from the future":        {func(http.Header) []byte { return body }, at.Add(-10 * time.Minute), ErrStaleTimestamp},
		"another body":           {func(http.Header) []byte { return []byte(`{"test": 1}`) }, at, ErrWrongSignature},
		"another ID":             {func(h http.Header) []byte { h.Set(StandardIDHeader, "msg_other"); return body }, at, ErrWrongSignature},
		"timestamp moved":        {func(h http.Header) []byte { h.Set(StandardTimestampHeader, "1614265900"); return body }, at.Add(10 * time.Minute), ErrWrongSignature},
		"no timestamp":           {func(h http.Header) []byte { h.Del(StandardTimestampHeader); return body }, at, ErrNoSignature},
		"timestamp not a number": {func(h http.Header) []byte { h.Set(StandardTimestampHeader, "soon"); return body }, at, ErrMalformedSignature},
		"other scheme only":      {func(h http.Header) []byte { h.Set(StandardSignatureHeader, "v1a,abc"); return body }, at, ErrWrongSignature},
		"one of several signatures": {func(h http.Header) []byte {
			h.Set(StandardSignatureHeader, "v1,AAAA "+h.Get(StandardSignatureHeader))
			return body
		}, at, nil},
	} {
		hh := h.Clone()
		b := tc.mutate(hh)
		if _, err := CheckStandardWebhook(secret, hh, b, tc.now, 5*time.Minute); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
}
