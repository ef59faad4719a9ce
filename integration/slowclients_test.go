package integration

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// Slow clients cannot hold opsbot's listener: connections that announce a
// body and never send it, or never finish their headers, are closed
// within the listener's bounds (10 s for headers, 10 s plus the announced
// length at 64 KiB/s for a body), the oldest at once past 128 of them —
// and meanwhile the homeserver's transactions keep being answered.
func TestSlowClients(t *testing.T) {
	onHomeservers(t, testSlowClients)
}

func testSlowClients(t *testing.T, hs homeserver) {
	w := newWorldWith(t, worldOptions{HS: hs, DB: "sqlite", Bots: defaultBots})
	alice := w.HS.RegisterUser(t, "alice")
	room := joinedRoom(t, alice, botID)
	addr := strings.TrimPrefix(w.Bot.URL, "http://")

	const stalled, slowHeaders = 180, 20
	requests := []string{
		"PUT /_matrix/app/v1/transactions/slow%d HTTP/1.1\r\nHost: opsbot\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n",
		"POST /skills/webhook/x%d HTTP/1.1\r\nHost: opsbot\r\nContent-Length: 4096\r\n\r\n",
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []string // what is still open at the deadline
	start := time.Now()
	hold := func(i int, prefix string) {
		defer wg.Done()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Errorf("dial %d: %v", i, err)
			return
		}
		defer c.Close()
		if _, err := c.Write([]byte(prefix)); err != nil {
			return // closed already
		}
		// Read until opsbot closes the connection (or the test's deadline).
		_ = c.SetReadDeadline(start.Add(25 * time.Second))
		buf := make([]byte, 512)
		for {
			if _, err := c.Read(buf); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					mu.Lock()
					open = append(open, fmt.Sprintf("%d %.30q", i, prefix))
					mu.Unlock()
				}
				return
			}
		}
	}
	for i := range stalled {
		wg.Add(1)
		go hold(i, fmt.Sprintf(requests[i%2], i))
	}
	for i := range slowHeaders {
		wg.Add(1)
		go hold(stalled+i, "PUT /_matrix/app/v1/transactions/hdr HTTP/1.1\r\nHost: opsbot\r\n")
	}

	// While they hang on, people are answered: the homeserver's
	// transactions get through.
	time.Sleep(500 * time.Millisecond)
	for i := range 3 {
		if ev := ask(t, alice, room, fmt.Sprintf("!echo still here %d", i), botID); ev.Body() != fmt.Sprintf("still here %d", i) {
			t.Fatalf("during the flood: %s", ev)
		}
	}
	wg.Wait()
	if len(open) > 0 {
		t.Fatalf("%d connections still open after 25 s, e.g. %v", len(open), open[:min(3, len(open))])
	}
	t.Logf("%d stalled connections closed within %v", stalled+slowHeaders, time.Since(start).Round(time.Second))
	if ev := ask(t, alice, room, "!ping", botID); !strings.HasPrefix(ev.Body(), "pong") {
		t.Fatalf("after the flood: %s", ev)
	}
}
