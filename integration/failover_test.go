package integration

import (
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opsbot/opsbot/integration/peers"
)

// service stands in for a Kubernetes Service: it forwards each request to a
// replica whose /readyz answers 200, and answers 503 when none does, so the
// homeserver retries.
type service struct {
	mu       sync.Mutex
	replicas []*Opsbot
}

func (s *service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	replicas := append([]*Opsbot(nil), s.replicas...)
	s.mu.Unlock()
	for _, o := range replicas {
		if o.Ready() {
			target, _ := url.Parse(o.URL)
			httputil.NewSingleHostReverseProxy(target).ServeHTTP(w, r)
			return
		}
	}
	http.Error(w, `{"errcode":"M_UNKNOWN","error":"no ready replica"}`, http.StatusServiceUnavailable)
}

// Two opsbot processes on one Postgres database: one leads, one stands by.
// The leader is killed with SIGKILL mid-conversation; the standby takes over
// within 10 s and every command is answered exactly once.
func TestFailover(t *testing.T) { onHomeservers(t, testFailover) }

func testFailover(t *testing.T, hs homeserver) {
	svc := &service{}
	frontURL := serveFront(t, svc)

	w := newWorldWith(t, worldOptions{HS: hs, DB: "postgres", Bots: defaultBots, PublicURL: frontURL})
	a := w.Bot
	b := a.Replica(t)
	svc.mu.Lock()
	svc.replicas = []*Opsbot{a, b}
	svc.mu.Unlock()
	b.StartStandby()
	b.WaitForLog(t, wait, "standing by")
	if b.Ready() {
		t.Fatal("the standby says it is ready")
	}
	if n := b.Metric(t, "opsbot_leader"); n != 0 {
		t.Fatalf("standby opsbot_leader = %v", n)
	}
	if n := a.Metric(t, "opsbot_leader"); n != 1 {
		t.Fatalf("leader opsbot_leader = %v", n)
	}

	alice := w.HS.RegisterUser(t, "alice")
	nio := peers.StartNio(t)
	nio.Login(w.HS.URL, alice.ID, alice.Password, "ALICENIO")
	room := nio.CreateRoom(true, botID)
	botJoined(t, alice, room, botID)

	answered := map[string]int{}
	ask := func(i int) string {
		want := fmt.Sprintf("command %d", i)
		nio.Send(room, "!echo "+want)
		return want
	}
	collect := func(n int) {
		for len(answered) < n {
			m := nio.WaitMessage(room, botID, 60*time.Second)
			answered[m.Body]++
		}
	}
	for i := 0; i < 5; i++ {
		ask(i)
	}
	collect(5)
	// Everything so far is handled; kill the leader between commands.
	a.WaitForLog(t, wait, `"message":"Handled event"`, `"type":"m.room.encrypted"`)
	time.Sleep(200 * time.Millisecond)
	a.Kill()
	killed := time.Now()
	for i := 5; i < 10; i++ {
		ask(i)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !b.Ready() {
		if time.Now().After(deadline) {
			t.Fatalf("the standby did not take over within 10 s of the leader's death")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("standby ready %v after the leader was killed", time.Since(killed).Round(time.Millisecond))
	collect(10)
	for i := 0; i < 10; i++ {
		if n := answered[fmt.Sprintf("command %d", i)]; n != 1 {
			t.Errorf("command %d answered %d times", i, n)
		}
	}
	// Nothing more arrives: answer counts stay at one after a sentinel.
	nio.Send(room, "!echo sentinel")
	for {
		m := nio.WaitMessage(room, botID, wait)
		if m.Body == "sentinel" {
			break
		}
		t.Errorf("extra answer after failover: %q", m.Body)
	}
	if !strings.Contains(b.Log(), "This opsbot is the leader") {
		t.Error("the standby never logged taking over")
	}
}
