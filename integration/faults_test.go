package integration

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/integration/harness"
)

// envInt reads a knob of the long fault-injection runs (make soak).
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// collectAnswers waits until every "load N" command has an answer and
// returns how often each was answered; a sentinel then proves no late
// duplicate is still coming. It counts what Dendrite stored: with hundreds
// of events at once, /sync returns a limited timeline and Dendrite's
// /messages skips events of the wide room graph concurrent sends make, so
// a count through either misses answers that are in the room.
func collectAnswers(t *testing.T, hs *harness.Homeserver, u *harness.User, room string, n int, timeout time.Duration) map[string]int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		answers := storedAnswers(t, hs, room, "load ")
		if len(answers) >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d commands answered within %v", len(answers), n, timeout)
		}
		time.Sleep(time.Second)
	}
	// The bot answers a room's events in order: once the sentinel is
	// answered, every answer to an earlier command has been sent.
	tag := fmt.Sprintf("sentinel-%d", time.Now().UnixNano())
	u.SendText(t, room, "!echo "+tag)
	for len(storedAnswers(t, hs, room, tag)) == 0 {
		if time.Now().After(deadline.Add(wait)) {
			t.Fatalf("no answer to the sentinel %s", tag)
		}
		time.Sleep(time.Second)
	}
	return storedAnswers(t, hs, room, "load ")
}

// storedAnswers counts the bot's messages in room whose body starts with
// prefix, by body, as Dendrite's sync database holds them.
func storedAnswers(t *testing.T, hs *harness.Homeserver, room, prefix string) map[string]int {
	t.Helper()
	path := filepath.Join(hs.Dir, "dendrite_syncapi.db")
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("counting answers needs Dendrite's SQLite sync database: %v", err)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT headered_event_json FROM syncapi_output_room_events WHERE room_id = ? AND sender = ? AND type = 'm.room.message'`, room, botID)
	if err != nil {
		t.Fatalf("reading Dendrite's events: %v", err)
	}
	defer rows.Close()
	answers := map[string]int{}
	for rows.Next() {
		var raw string
		if err := rows.Scan(&raw); err != nil {
			t.Fatal(err)
		}
		var ev struct {
			Content struct {
				Body string `json:"body"`
			} `json:"content"`
		}
		if err := json.Unmarshal([]byte(raw), &ev); err != nil {
			t.Fatalf("an event in Dendrite's database: %v", err)
		}
		if strings.HasPrefix(ev.Content.Body, prefix) {
			answers[ev.Content.Body]++
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return answers
}

// storedMarkers counts the bot's messages in room (encrypted or not) by
// their transaction marker, as Dendrite's sync database holds them: a
// message sent twice has the same marker twice, even when its body is
// encrypted.
func storedMarkers(t *testing.T, hs *harness.Homeserver, room string) map[string]int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(hs.Dir, "dendrite_syncapi.db")+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT headered_event_json FROM syncapi_output_room_events WHERE room_id = ? AND sender = ? AND type IN ('m.room.message', 'm.room.encrypted')`, room, botID)
	if err != nil {
		t.Fatalf("reading Dendrite's events: %v", err)
	}
	defer rows.Close()
	markers := map[string]int{}
	for rows.Next() {
		var raw string
		if err := rows.Scan(&raw); err != nil {
			t.Fatal(err)
		}
		var ev struct {
			Content map[string]any `json:"content"`
		}
		if err := json.Unmarshal([]byte(raw), &ev); err != nil {
			t.Fatalf("an event in Dendrite's database: %v", err)
		}
		if m, ok := ev.Content["org.opsbot.txn_id"].(string); ok {
			markers[m]++
		}
	}
	return markers
}

func checkExactlyOnce(t *testing.T, answers map[string]int, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if c := answers[fmt.Sprintf("load %d", i)]; c != 1 {
			t.Errorf("command %d answered %d times", i, c)
		}
	}
}

// The homeserver goes away while the bot is answering: its sends are
// retried (and, where an attempt's outcome is unknown, checked against the
// room's history) until the homeserver is back, and every command is
// answered exactly once. The commands reach opsbot as a transaction pushed
// while the homeserver is down, so that every answer meets the outage.
func TestHomeserverOutage(t *testing.T) {
	outage := time.Duration(envInt("OPSBOT_OUTAGE_SECONDS", 8)) * time.Second
	w := newWorld(t, "sqlite", defaultBots, "")
	alice := w.HS.RegisterUser(t, "alice")
	room := joinedRoom(t, alice, botID)
	if ev := ask(t, alice, room, "!echo before", botID); ev.Body() != "before" {
		t.Fatalf("got %s", ev)
	}
	const n = 10
	var events []string
	for i := 0; i < n; i++ {
		events = append(events, fmt.Sprintf(`{"type":"m.room.message","event_id":"$outage-%d-%d:localhost","room_id":%q,"sender":%q,"origin_server_ts":%d,"content":{"msgtype":"m.text","body":"!echo load %d"}}`,
			i, time.Now().UnixNano(), room, alice.ID, time.Now().UnixMilli(), i))
	}
	w.HS.Stop()
	if code := w.Bot.PutTransaction(t, fmt.Sprintf("outage-%d", time.Now().UnixNano()), `{"events":[`+strings.Join(events, ",")+`]}`); code != 200 {
		t.Fatalf("HTTP %d", code)
	}
	w.Bot.WaitForLog(t, wait, "Homeserver request failed, retrying")
	time.Sleep(outage)
	w.HS.Restart(t)
	checkExactlyOnce(t, collectAnswers(t, w.HS, alice, room, n, 3*time.Minute), n)
	if n := w.Bot.Metric(t, `opsbot_homeserver_requests_total{op="send",outcome="retryable"}`); n < 1 {
		t.Errorf("failed sends during the outage were not counted: %v", n)
	}
}

// The database refuses writes (read-only, as when a disk fills up or a
// replica is promoted badly): opsbot answers the homeserver with a
// retryable error instead of acknowledging what it cannot store; once the
// database takes writes again, nothing is lost.
func TestReadOnlyDatabase(t *testing.T) {
	w := newWorld(t, "postgres", defaultBots, "")
	alice := w.HS.RegisterUser(t, "alice")
	room := joinedRoom(t, alice, botID)
	if ev := ask(t, alice, room, "!echo before", botID); ev.Body() != "before" {
		t.Fatalf("got %s", ev)
	}
	db, err := sql.Open("pgx", w.Bot.Cfg.Database.URI)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	u, err := url.Parse(w.Bot.Cfg.Database.URI)
	if err != nil {
		t.Fatal(err)
	}
	dbName := strings.TrimPrefix(u.Path, "/")
	setReadOnly := func(on bool) {
		t.Helper()
		if _, err := db.Exec(fmt.Sprintf("ALTER DATABASE %s SET default_transaction_read_only = %v", dbName, on)); err != nil {
			t.Fatal(err)
		}
		// Existing sessions keep their setting: end opsbot's, except the
		// one holding leadership (its loss would stop opsbot by design).
		if _, err := db.Exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()
			AND pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory')`, dbName); err != nil {
			t.Fatal(err)
		}
	}
	setReadOnly(true)
	alice.SendText(t, room, "!echo while read-only")
	w.Bot.WaitForLog(t, wait, "Could not record transaction; the homeserver will retry")
	if n := w.Bot.Metric(t, `opsbot_transactions_total{outcome="store_error"}`); n < 1 {
		t.Errorf("store errors not counted: %v", n)
	}
	setReadOnly(false)
	// Dendrite retries with backoff (2 s, 4 s, ...): the answer comes late, once.
	ev := alice.WaitForMessage(t, room, 90*time.Second, harness.From(botID))
	if ev.Body() != "while read-only" {
		t.Fatalf("after the database recovered the bot said %s", ev)
	}
	if extra := sentinel(t, alice, room, botID); len(extra) != 0 {
		t.Fatalf("extra answers: %v", extra)
	}
}

// The database cannot confirm the leader's term for a few seconds (the
// leader row locked by another session, as under lock contention or a
// stalled disk) just as a skill's answer is to be sent: the answer waits,
// goes out once the database answers again, exactly once, and the skill
// ran once. (Refusing the send would let the event be marked done without
// its answer as soon as the database was back.)
func TestLeadershipInDoubt(t *testing.T) {
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	var requests atomic.Int32
	skill := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		select {
		case arrived <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"actions":[{"type":"reply","text":"answered after the doubt"}]}`)
	}))
	t.Cleanup(skill.Close)
	extra := fmt.Sprintf(`external_skills:
  - name: slow
    url: %s
    secret: %s
    commands: [{pattern: slow}]
`, skill.URL, config.RandomToken())
	bots := `
  - localpart: opsbot
    displayname: Ops Bot
    skills: [echo, slow]
`
	w := newWorldWith(t, worldOptions{DB: "postgres", Bots: bots, Extra: extra})
	alice := w.HS.RegisterUser(t, "alice")
	room := joinedRoom(t, alice, botID)
	if ev := ask(t, alice, room, "!echo before", botID); ev.Body() != "before" {
		t.Fatalf("got %s", ev)
	}

	alice.SendText(t, room, "!slow")
	select {
	case <-arrived:
	case <-time.After(wait):
		t.Fatal("the skill was never called")
	}
	db, err := sql.Open("pgx", w.Bot.Cfg.Database.URI)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	locker, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Rollback()
	if _, err := locker.Exec(`LOCK TABLE opsbot_leader IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // past the term's last confirmation
	close(release)
	// The send's check waits 2 s for the database, then asks every second.
	time.Sleep(4 * time.Second)
	if err := locker.Rollback(); err != nil {
		t.Fatal(err)
	}

	ev := alice.WaitForMessage(t, room, wait, harness.From(botID))
	if ev.Body() != "answered after the doubt" {
		t.Fatalf("after the doubt the bot said %s", ev)
	}
	w.Bot.WaitForLog(t, wait, "Not sending yet: the database has not confirmed")
	if extra := sentinel(t, alice, room, botID); len(extra) != 0 {
		t.Fatalf("extra answers: %v", extra)
	}
	if n := requests.Load(); n != 1 {
		t.Errorf("the skill was called %d times, want once", n)
	}
}
