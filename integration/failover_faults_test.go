package integration

import (
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opsbot/opsbot/integration/peers"
)

// replicas are opsbot processes behind a readiness-checking front, as a
// Kubernetes Service routes to ready pods.
type replicas struct {
	t   *testing.T
	svc *service
	all []*Opsbot
	db  string // Postgres URI
}

// leader returns the replica that says it is ready, waiting for one.
func (r *replicas) leader(within time.Duration) (*Opsbot, time.Duration) {
	r.t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		for _, o := range r.all {
			if o.Ready() {
				return o, time.Since(start)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.t.Fatalf("no replica ready within %v", within)
	return nil, 0
}

// other is the replica that is not o.
func (r *replicas) other(o *Opsbot) *Opsbot {
	if r.all[0] == o {
		return r.all[1]
	}
	return r.all[0]
}

// restart starts a replica again once its process has ended, as a
// supervisor would: it comes back as a standby.
func (r *replicas) restart(o *Opsbot) {
	r.t.Helper()
	o.WaitExit(r.t, 30*time.Second)
	o.StartStandby()
}

// leaderSession is the Postgres backend that holds the leader's advisory lock.
func (r *replicas) leaderSession() int {
	r.t.Helper()
	db, err := sql.Open("pgx", r.db)
	if err != nil {
		r.t.Fatal(err)
	}
	defer db.Close()
	deadline := time.Now().Add(wait)
	for {
		var pid int
		err := db.QueryRow(`SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) LIMIT 1`).Scan(&pid)
		if err == nil {
			return pid
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("no advisory lock holder: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (r *replicas) exec(q string, args ...any) {
	r.t.Helper()
	db, err := sql.Open("pgx", r.db)
	if err != nil {
		r.t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(q, args...); err != nil {
		r.t.Fatalf("%s: %v", q, err)
	}
}

func (r *replicas) count(q string) int {
	r.t.Helper()
	db, err := sql.Open("pgx", r.db)
	if err != nil {
		r.t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(q).Scan(&n); err != nil {
		r.t.Fatalf("%s: %v", q, err)
	}
	return n
}

// TestFailoverFaults: two replicas on Postgres behind a readiness-checking
// front, an encrypted room, and a person sending a command every 150 ms,
// while the leader is killed (SIGKILL), cut off from its database session
// (pg_terminate_backend), frozen for longer than its lease (SIGSTOP), and
// stopped cleanly (SIGTERM). Every command is answered exactly once, and
// the inbox is empty at the end. make soak repeats the faults for many
// rounds (OPSBOT_FAILOVER_ROUNDS).
func TestFailoverFaults(t *testing.T) {
	rounds := envInt("OPSBOT_FAILOVER_ROUNDS", 1)
	const lease = 3 * time.Second
	svc := &service{}
	frontURL := serveFront(t, svc)

	w := newWorldWith(t, worldOptions{DB: "postgres", Bots: defaultBots, PublicURL: frontURL,
		Extra: fmt.Sprintf("leader:\n  lease: %s\npermissions:\n  rate_limit:\n    user_per_minute: 0\n    room_per_minute: 0\n", lease)})
	a := w.Bot
	b := a.Replica(t)
	r := &replicas{t: t, svc: svc, all: []*Opsbot{a, b}, db: a.Cfg.Database.URI}
	svc.mu.Lock()
	svc.replicas = r.all
	svc.mu.Unlock()
	b.StartStandby()
	b.WaitForLog(t, wait, "standing by")

	alice := w.HS.RegisterUser(t, "alice")
	nio := peers.StartNio(t)
	nio.Login(w.HS.URL, alice.ID, alice.Password, "ALICENIO")
	room := nio.CreateRoom(true, botID)
	botJoined(t, alice, room, botID)
	nio.Send(room, "!echo warm-up")
	if m := nio.WaitMessage(room, botID, wait); m.Body != "warm-up" {
		t.Fatalf("warm-up answered %+v", m)
	}

	// The person: a command every 150 ms until told to stop.
	var mu sync.Mutex
	var sent []string
	stop := make(chan struct{})
	sender := make(chan struct{})
	go func() {
		defer close(sender)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(150 * time.Millisecond):
			}
			body := fmt.Sprintf("cmd-%d", i)
			if _, err := nio.TrySend(room, "!echo "+body); err != nil {
				t.Errorf("sending %s: %v", body, err)
				return
			}
			mu.Lock()
			sent = append(sent, body)
			mu.Unlock()
		}
	}()

	type fault struct {
		name   string
		inject func(leader *Opsbot) // the old leader is restarted afterwards
	}
	faults := []fault{
		{"SIGKILL", func(o *Opsbot) { o.Kill() }},
		{"session terminated", func(o *Opsbot) {
			r.exec(`SELECT pg_terminate_backend($1)`, r.leaderSession())
		}},
		{"SIGSTOP beyond the lease", func(o *Opsbot) {
			o.Signal(syscall.SIGSTOP)
			time.AfterFunc(lease+2*time.Second, func() { o.Signal(syscall.SIGCONT) })
		}},
		{"SIGTERM hand-over", func(o *Opsbot) { o.Stop() }},
	}
	var timings []string
	for round := 0; round < rounds; round++ {
		for _, f := range faults {
			time.Sleep(time.Second) // commands flow between faults
			old, _ := r.leader(wait)
			start := time.Now()
			f.inject(old)
			// The other replica becomes ready (the old one, frozen or cut
			// off, must not be taken for it).
			t.Logf("round %d: %s", round+1, f.name)
			for {
				if next, _ := r.leader(2 * wait); next != old {
					break
				}
				if time.Since(start) > 2*wait {
					t.Fatalf("%s: no other replica took over within %v\nold leader:\n%s\nother:\n%s", f.name, 2*wait, old.LogTail(25), r.other(old).LogTail(25))
				}
				time.Sleep(20 * time.Millisecond)
			}
			took := time.Since(start)
			timings = append(timings, fmt.Sprintf("%s: %v", f.name, took.Round(10*time.Millisecond)))
			r.restart(old)
		}
	}
	time.Sleep(time.Second)
	close(stop)
	<-sender
	t.Logf("failover times: %s", strings.Join(timings, "; "))

	// Every command answered exactly once.
	mu.Lock()
	want := append([]string(nil), sent...)
	mu.Unlock()
	got := map[string]int{}
	for len(got) < len(want) {
		m, err := nio.TryWaitMessage(room, botID, 90*time.Second)
		if err != nil {
			t.Fatalf("only %d of %d commands answered: %v", len(got), len(want), err)
		}
		got[m.Body]++
	}
	nio.Send(room, "!echo sentinel")
	for {
		m := nio.WaitMessage(room, botID, wait)
		if m.Body == "sentinel" {
			break
		}
		got[m.Body]++
	}
	for _, c := range want {
		if got[c] != 1 {
			t.Errorf("%s answered %d times", c, got[c])
		}
	}
	// Dendrite's own record: no reply was sent twice (a second copy has
	// the same transaction marker), whatever the person's client showed.
	for marker, n := range storedMarkers(t, w.HS, room) {
		if n != 1 {
			t.Errorf("the reply with transaction ID %s is in the room %d times", marker, n)
		}
	}
	if n := r.count(`SELECT count(*) FROM opsbot_inbox WHERE NOT done`); n != 0 {
		t.Errorf("%d events left unfinished in the inbox", n)
	}
	t.Logf("%d commands, each answered once, through %d faults", len(want), rounds*len(faults))
}
