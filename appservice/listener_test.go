package appservice

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// serveGuarded serves a handler like the appservice listener: a route that
// authenticates ("Bearer good") and then reads the body, and a health probe.
func serveGuarded(t *testing.T) (addr string, l *guardedListener) {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /_matrix/app/v1/transactions/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer good" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if _, err := io.ReadAll(r.Body); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, "{}")
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l = guard(inner)
	srv := newServer(mux)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return inner.Addr().String(), l
}

func shorten(t *testing.T) {
	saved := []time.Duration{headerTimeout, bodyGrace}
	headerTimeout, bodyGrace = 300*time.Millisecond, 500*time.Millisecond
	t.Cleanup(func() { headerTimeout, bodyGrace = saved[0], saved[1] })
}

// closedWithin reports whether the server closes c within d (after
// whatever response it sends).
func closedWithin(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	return err == nil // EOF: the server closed; a timeout is an error
}

func TestSlowClientsAreCut(t *testing.T) {
	shorten(t)
	addr, _ := serveGuarded(t)
	dial := func(request string) net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := io.WriteString(c, request); err != nil {
			t.Fatal(err)
		}
		return c
	}
	// No token, a body announced and never sent: refused and closed at
	// once, not held while the server waits for the body.
	noToken := dial("PUT /_matrix/app/v1/transactions/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
	if !closedWithin(noToken, 200*time.Millisecond) {
		t.Fatal("an unauthenticated request with an unsent body kept its connection")
	}
	// Headers never finished.
	slowHeaders := dial("PUT /_matrix/app/v1/transactions/2 HTTP/1.1\r\nHost: x\r\n")
	if !closedWithin(slowHeaders, time.Second) {
		t.Fatal("a request with unfinished headers kept its connection")
	}
	// Authenticated, body announced and never sent: cut at the body's deadline.
	noBody := dial("PUT /_matrix/app/v1/transactions/3 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good\r\nContent-Length: 1000\r\n\r\n")
	if !closedWithin(noBody, 2*time.Second) {
		t.Fatal("an authenticated request with an unsent body kept its connection past the body deadline")
	}
	// Meanwhile a good transaction goes through, and its connection stays.
	good := dial("PUT /_matrix/app/v1/transactions/4 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good\r\nContent-Length: 2\r\n\r\n{}")
	resp, err := http.ReadResponse(bufio.NewReader(good), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("good transaction: %v %v", resp, err)
	}
}

func TestUnauthenticatedConnectionsAreCapped(t *testing.T) {
	addr, l := serveGuarded(t)
	var idle []net.Conn
	for range maxUnauthenticated + 20 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		idle = append(idle, c)
	}
	deadline := time.Now().Add(2 * time.Second)
	for l.unauthenticated() > maxUnauthenticated || l.unauthenticated() < maxUnauthenticated-5 {
		if time.Now().After(deadline) {
			t.Fatalf("%d unauthenticated connections, cap %d", l.unauthenticated(), maxUnauthenticated)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The oldest were closed to make room.
	if !closedWithin(idle[0], time.Second) {
		t.Fatal("the oldest unauthenticated connection is still open past the cap")
	}
	// A homeserver connecting now gets its transaction through, and once
	// authenticated its connection no longer counts.
	before := l.unauthenticated()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "PUT /_matrix/app/v1/transactions/5 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good\r\nContent-Length: 2\r\n\r\n{}")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("transaction at the cap: %v %v", resp, err)
	}
	if got := l.unauthenticated(); got >= before+1 {
		t.Fatalf("%d unauthenticated after a successful transaction (was %d)", got, before)
	}
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatal(addr)
	}
}
