// Package bench holds the shared parts of opsbot's performance
// benchmarks (`make bench`, see docs/performance.md): realistic pushed
// transactions, a driver that PUTs them over real HTTP at a given
// concurrency and reports events/s, latency percentiles and CPU per event,
// the two floors opsbot is compared with (a bare net/http handler and a bare
// mautrix appservice), and a stub homeserver that answers sends.
//
// The benchmarks themselves live in this package's *_bench_test.go files, so
// that one `go test -bench` run measures every variant side by side in the
// same process and the ratios between them mean something on a noisy machine.
package bench

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mas "maunium.net/go/mautrix/appservice"
)

// EventsPerTxn is how many room events each pushed transaction carries.
const EventsPerTxn = 50

// Rooms is how many rooms the events of a transaction are spread over
// (event i goes to room i % Rooms), as a homeserver batches the events of
// all the rooms an appservice is in.
const Rooms = 16

// Identities used by every benchmark.
const (
	HSToken = "hs-token-for-benchmarks-0123456789abcdef"
	ASToken = "as-token-for-benchmarks-0123456789abcdef"
	Domain  = "bench.example"
	Sender  = "@alice:bench.example"
	Bot     = "@opsbot:bench.example"
)

// RoomID returns the i-th benchmark room.
func RoomID(i int) string { return fmt.Sprintf("!benchroom%02dAbCdEfGhIj:%s", i%Rooms, Domain) }

// Content is the content of every benchmark message: a realistic ops-chat
// message with an HTML body. Its body matches the benchmark skill's regex.
const Content = `{"body":"deploy api-gateway v2.14.3 to production? CI run 88214 passed, canary at 5% for 20 min: error rate 0.02%, p99 184 ms. Rollback: helm rollback api-gateway 41","format":"org.matrix.custom.html","formatted_body":"deploy <code>api-gateway</code> v2.14.3 to <b>production</b>? CI run 88214 passed, canary at 5% for 20 min","msgtype":"m.text","m.mentions":{}}`

// Event IDs are "$" + run (6 letters) + "t" + 9-digit transaction number +
// "e" + 2-digit index + padding, 44 characters like a real room-v4 event ID.
const (
	eventIDLen    = 44
	eventIDTxnPos = 8 // offset of the transaction number in the event ID
	txnDigits     = 9
)

// EventID returns the ID of event i of transaction n of a run.
func EventID(run string, n, i int) string {
	s := fmt.Sprintf("$%st%09de%02d", run, n, i)
	return s + strings.Repeat("x", eventIDLen-len(s))
}

// TxnOfEventID parses the transaction number back out of an event ID found
// at the start of b (after the "$"); ok is false if it is not one of ours.
func TxnOfEventID(run string, b []byte) (n int, ok bool) {
	if len(b) < eventIDLen || b[0] != '$' || string(b[1:1+len(run)]) != run {
		return 0, false
	}
	n, err := strconv.Atoi(string(b[eventIDTxnPos : eventIDTxnPos+txnDigits]))
	return n, err == nil
}

// NewRun returns a fresh run tag (6 lowercase letters), so that event IDs
// are unique across benchmark runs too.
func NewRun() string {
	b := make([]byte, 6)
	for i := range b {
		b[i] = byte('a' + rand.IntN(26))
	}
	return string(b)
}

// MessageEvent returns the JSON of event i of transaction n, about 600 bytes.
func MessageEvent(run string, n, i int) []byte {
	return []byte(fmt.Sprintf(`{"content":%s,"event_id":"%s","origin_server_ts":%d,"room_id":"%s","sender":"%s","type":"m.room.message","unsigned":{"age":42,"membership":"join"}}`,
		Content, EventID(run, n, i), 1764150000000+int64(n)*EventsPerTxn+int64(i), RoomID(i), Sender))
}

// Transaction wraps raw events as a transaction body.
func Transaction(events [][]byte) []byte {
	var buf bytes.Buffer
	buf.WriteString(`{"events":[`)
	for i, ev := range events {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(ev)
	}
	buf.WriteString(`]}`)
	return buf.Bytes()
}

// PlainTxns makes the plaintext transactions of a run from a template: each
// body is the template with the transaction number written into its event
// IDs, which costs a copy, not a JSON encoding.
type PlainTxns struct {
	run  string
	tmpl []byte
	pos  []int // offsets of the transaction number digits in tmpl
}

// NewPlainTxns prepares the template.
func NewPlainTxns(run string) *PlainTxns {
	events := make([][]byte, EventsPerTxn)
	for i := range events {
		events[i] = MessageEvent(run, 0, i)
	}
	p := &PlainTxns{run: run, tmpl: Transaction(events)}
	for i := range EventsPerTxn {
		idx := bytes.Index(p.tmpl, []byte(EventID(run, 0, i)))
		p.pos = append(p.pos, idx+eventIDTxnPos)
	}
	return p
}

// Body writes transaction n into buf (reused) and returns it.
func (p *PlainTxns) Body(n int, buf []byte) []byte {
	buf = append(buf[:0], p.tmpl...)
	var digits [txnDigits]byte
	v := n
	for i := txnDigits - 1; i >= 0; i-- {
		digits[i] = byte('0' + v%10)
		v /= 10
	}
	for _, at := range p.pos {
		copy(buf[at:], digits[:])
	}
	return buf
}

// Size is the body size of one transaction in bytes.
func (p *PlainTxns) Size() int { return len(p.tmpl) }

// Load describes one measured run of PUTs.
type Load struct {
	// URL is the appservice's base URL.
	URL string
	// Concurrency is how many transactions are in flight at once.
	Concurrency int
	// Warmup transactions are sent (and waited for) before the timer starts.
	Warmup int
	// Body returns the body of transaction n (numbered from 0, warm-up
	// first), written into buf if it likes.
	Body func(n int, buf []byte) []byte
	// Done, if set, blocks until every event of transaction n has been
	// handled; a transaction's latency then ends there, not at the 200.
	Done func(n int) error
	// Extra, if set, is called before and after the timed part (outside
	// the timer) and its metrics reported: for CPU spent outside this
	// process (Postgres) and for connection churn.
	Extra Probe
}

// Probe measures something outside the timer around a run.
type Probe interface {
	Start()
	Report(b *testing.B, events int)
}

// Drive sends b.N transactions (after the warm-up) at the load's
// concurrency and reports events/s, p50 and p99 per transaction in ms, and
// this process's CPU time (user+sys) per event in µs.
func Drive(b *testing.B, l Load) {
	b.Helper()
	client := &http.Client{Transport: &http.Transport{
		MaxIdleConns: 64, MaxIdleConnsPerHost: 64, IdleConnTimeout: time.Minute, DisableCompression: true,
	}}
	defer client.CloseIdleConnections()
	var buf []byte
	for n := range l.Warmup {
		buf = l.Body(n, buf)
		if err := put(client, l.URL, n, buf); err != nil {
			b.Fatal(err)
		}
		if l.Done != nil {
			if err := l.Done(n); err != nil {
				b.Fatal(err)
			}
		}
	}
	if l.Extra != nil {
		l.Extra.Start()
	}
	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	b.ResetTimer()
	cpu0 := CPUTime()
	start := time.Now()
	for range l.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				n := l.Warmup + i
				buf = l.Body(n, buf)
				t0 := time.Now()
				err := put(client, l.URL, n, buf)
				if err == nil && l.Done != nil {
					err = l.Done(n)
				}
				lat[i] = time.Since(t0)
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					next.Store(int64(b.N)) // stop the others
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := CPUTime() - cpu0
	b.StopTimer()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	events := b.N * EventsPerTxn
	slices.Sort(lat)
	Report(b, "events/s", float64(events)/elapsed.Seconds())
	Report(b, "p50-ms", ms(Percentile(lat, 50)))
	Report(b, "p99-ms", ms(Percentile(lat, 99)))
	Report(b, "cpu-us/event", float64(cpu.Nanoseconds())/1e3/float64(events))
	if l.Extra != nil {
		l.Extra.Report(b, events)
	}
}

var (
	resultsMu sync.Mutex
	results   = map[string]map[string]float64{}
	order     []string
)

// Report reports a metric of the benchmark and keeps it for Summary. The
// last run of a benchmark (the one with the final b.N) wins.
func Report(b *testing.B, unit string, v float64) {
	b.ReportMetric(v, unit)
	resultsMu.Lock()
	defer resultsMu.Unlock()
	m := results[b.Name()]
	if m == nil {
		m = map[string]float64{}
		results[b.Name()] = m
		order = append(order, b.Name())
	}
	m[unit] = v
}

// Result returns a metric kept by Report.
func Result(name, unit string) (float64, bool) {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	v, ok := results[name][unit]
	return v, ok
}

func put(client *http.Client, base string, n int, body []byte) error {
	req, err := http.NewRequest(http.MethodPut, base+"/_matrix/app/v1/transactions/txn"+strconv.Itoa(n), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+HSToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("transaction %d: HTTP %d: %s", n, resp.StatusCode, answer)
	}
	return nil
}

// Percentile returns the p-th percentile of sorted durations (nearest rank).
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	k := int(float64(len(sorted))*p/100+0.999999) - 1
	return sorted[min(max(k, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// CPUTime is this process's CPU time so far, user plus system.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Serve starts an HTTP server for h on loopback, closed when b ends. The
// returned counter counts TCP connections accepted.
func Serve(b testing.TB, h http.Handler) (url string, conns *atomic.Int64) {
	conns = new(atomic.Int64)
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	b.Cleanup(srv.Close)
	return srv.URL, conns
}

// NetHTTPFloor is floor 1: a bare net/http handler that checks the bearer
// token and decodes the transaction into a struct with raw events. Each
// decoded event is counted, so the compiler cannot skip the decoding.
func NetHTTPFloor(count *atomic.Int64) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /_matrix/app/v1/transactions/{txnID}", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+HSToken {
			http.Error(w, `{"errcode":"M_FORBIDDEN"}`, http.StatusForbidden)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, `{"errcode":"M_UNKNOWN"}`, http.StatusBadRequest)
			return
		}
		var txn struct {
			Events []json.RawMessage `json:"events"`
		}
		if err := json.Unmarshal(body, &txn); err != nil {
			http.Error(w, `{"errcode":"M_NOT_JSON"}`, http.StatusBadRequest)
			return
		}
		count.Add(int64(len(txn.Events)))
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("{}"))
	})
	return mux
}

// MautrixFloor is floor 2: a bare mautrix appservice (its own transaction
// handler and router) with a goroutine draining its event channel and
// counting the events. Stop the drain with the returned function.
func MautrixFloor(count *atomic.Int64) (http.Handler, func()) {
	as := mas.Create()
	as.Registration = &mas.Registration{ID: "bench", AppToken: ASToken, ServerToken: HSToken, SenderLocalpart: "opsbot"}
	as.HomeserverDomain = Domain
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-as.Events:
				count.Add(1)
			case <-stop:
				return
			}
		}
	}()
	return as.Router, func() { close(stop) }
}

// WaitCount waits until c reaches want, or fails after a timeout.
func WaitCount(c *atomic.Int64, want int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for c.Load() < want {
		if time.Now().After(deadline) {
			return fmt.Errorf("counted %d events, want %d", c.Load(), want)
		}
		time.Sleep(time.Millisecond)
	}
	if got := c.Load(); got != want {
		return fmt.Errorf("counted %d events, want %d", got, want)
	}
	return nil
}

// Homeserver is a stub homeserver for the outbox: it answers every send
// with a new event ID and tells Tracker which benchmark transaction the
// reply belongs to (from the in-reply-to event ID in its body).
type Homeserver struct {
	URL     string
	Conns   *atomic.Int64
	Sends   atomic.Int64
	Tracker *Tracker
}

// NewHomeserver starts the stub.
func NewHomeserver(b testing.TB, tracker *Tracker) *Homeserver {
	hs := &Homeserver{Tracker: tracker}
	hs.URL, hs.Conns = Serve(b, http.HandlerFunc(hs.serve))
	return hs
}

var inReplyTo = []byte(`"m.in_reply_to":{"event_id":"`)

func (hs *Homeserver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	if r.Method != http.MethodPut || !strings.Contains(r.URL.Path, "/send/") {
		_, _ = w.Write([]byte("{}"))
		return
	}
	k := hs.Sends.Add(1)
	if i := bytes.Index(body, inReplyTo); i >= 0 && hs.Tracker != nil {
		hs.Tracker.Reply(body[i+len(inReplyTo):])
	}
	fmt.Fprintf(w, `{"event_id":"$reply%d"}`, k)
}

// Tracker follows each transaction's events through the pipeline: an event
// is handled once the stub homeserver has received its reply (if replies
// are expected) and the pipeline has marked it done in the inbox. Done
// waits for both.
type Tracker struct {
	run     string
	want    int32 // replies + marks per transaction
	replies []atomic.Int32
	steps   []atomic.Int32 // replies + marks, done at want
	done    []chan struct{}
	extra   atomic.Int64 // replies beyond one per event, or to unknown events
	seqs    sync.Map     // inbox seq -> transaction number
	failed  chan struct{}
	failErr atomic.Pointer[error]
}

// NewTracker tracks transactions 0..n-1 of run; replies says whether every
// event is answered.
func NewTracker(run string, n int, replies bool) *Tracker {
	t := &Tracker{run: run, want: EventsPerTxn, replies: make([]atomic.Int32, n), steps: make([]atomic.Int32, n),
		done: make([]chan struct{}, n), failed: make(chan struct{})}
	if replies {
		t.want = 2 * EventsPerTxn
	}
	for i := range t.done {
		t.done[i] = make(chan struct{})
	}
	return t
}

// Reply records a reply to the event whose ID starts eventID.
func (t *Tracker) Reply(eventID []byte) {
	n, ok := TxnOfEventID(t.run, eventID)
	if !ok || n >= len(t.replies) || t.want == EventsPerTxn {
		t.extra.Add(1)
		return
	}
	if t.replies[n].Add(1) > EventsPerTxn {
		t.extra.Add(1)
		return
	}
	t.step(n)
}

// Delivered remembers which transaction an inbox entry belongs to (the
// intake names transactions "txn<n>").
func (t *Tracker) Delivered(seq int64, txnID string) {
	if n, err := strconv.Atoi(strings.TrimPrefix(txnID, "txn")); err == nil {
		t.seqs.Store(seq, n)
	}
}

// Marked records that the pipeline marked inbox entry seq done.
func (t *Tracker) Marked(seq int64) {
	if n, ok := t.seqs.LoadAndDelete(seq); ok && n.(int) < len(t.steps) {
		t.step(n.(int))
	}
}

func (t *Tracker) step(n int) {
	if t.steps[n].Add(1) == t.want {
		close(t.done[n])
	}
}

// Fail makes Done return err at once (a handler failed: no reply will come).
func (t *Tracker) Fail(err error) {
	if t.failErr.CompareAndSwap(nil, &err) {
		close(t.failed)
	}
}

// Done waits until every event of transaction n has been answered (if
// replies are expected) and marked done.
func (t *Tracker) Done(n int) error {
	select {
	case <-t.done[n]:
		return nil
	case <-t.failed:
		return *t.failErr.Load()
	case <-time.After(time.Minute):
		return fmt.Errorf("transaction %d: %d of %d events answered after a minute (answers + marks: %d)",
			n, t.replies[n].Load(), EventsPerTxn, t.steps[n].Load())
	}
}

// Check fails if any event was answered twice or an unknown one answered.
func (t *Tracker) Check() error {
	if n := t.extra.Load(); n > 0 {
		return fmt.Errorf("%d replies beyond one per event (duplicates or unknown events)", n)
	}
	return nil
}

// ConnProbe reports new TCP connections per transaction to a server (the
// stub homeserver: opsbot's outbox should reuse its connections).
type ConnProbe struct {
	Name  string
	Conns *atomic.Int64
	start int64
}

func (p *ConnProbe) Start() { p.start = p.Conns.Load() }
func (p *ConnProbe) Report(b *testing.B, events int) {
	Report(b, p.Name+"-conns/txn", float64(p.Conns.Load()-p.start)/float64(events/EventsPerTxn))
}

// Probes combines probes.
type Probes []Probe

func (ps Probes) Start() {
	for _, p := range ps {
		p.Start()
	}
}
func (ps Probes) Report(b *testing.B, events int) {
	for _, p := range ps {
		p.Report(b, events)
	}
}

// PostgresCPU reports the CPU time the local Postgres server spent during
// the run, per event: the postmaster and all its children, including the
// backends that exited during the run (their time is added to the
// postmaster's reaped-children time). It counts the whole server, so other
// clients of the same server during the run inflate it.
type PostgresCPU struct {
	Admin *sql.DB // any connection to the server
	start time.Duration
}

func (p *PostgresCPU) total() time.Duration {
	var backend int
	if err := p.Admin.QueryRowContext(context.Background(), `SELECT pg_backend_pid()`).Scan(&backend); err != nil {
		return 0
	}
	postmaster := procStat(backend).ppid
	total := procStat(postmaster).withChildren
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st := procStat(pid); st.ppid == postmaster {
			total += st.own
		}
	}
	return total
}

func (p *PostgresCPU) Start() { p.start = p.total() }
func (p *PostgresCPU) Report(b *testing.B, events int) {
	Report(b, "pg-cpu-us/event", float64((p.total()-p.start).Nanoseconds())/1e3/float64(events))
}

type procCPU struct {
	ppid              int
	own, withChildren time.Duration
}

// procStat reads a process's parent and CPU times from /proc/<pid>/stat.
func procStat(pid int) procCPU {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procCPU{ppid: -1}
	}
	// The fields after the command name (which may hold spaces) start at ") ".
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procCPU{ppid: -1}
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 15 {
		return procCPU{ppid: -1}
	}
	num := func(k int) time.Duration {
		v, _ := strconv.ParseInt(f[k], 10, 64)
		const ticks = 100 // USER_HZ on Linux
		return time.Duration(v) * time.Second / ticks
	}
	ppid, _ := strconv.Atoi(f[1])
	own := num(11) + num(12) // utime, stime
	return procCPU{ppid: ppid, own: own, withChildren: own + num(13) + num(14)}
}

// DBConns reports the database connections opened per transaction by a
// pool (database/sql closes idle connections beyond MaxIdleConns, 2 by
// default, and opens new ones under load).
type DBConns struct {
	DB    *sql.DB
	start int64
}

func (p *DBConns) opened() int64 {
	s := p.DB.Stats()
	return int64(s.OpenConnections) + s.MaxIdleClosed + s.MaxIdleTimeClosed + s.MaxLifetimeClosed
}
func (p *DBConns) Start() { p.start = p.opened() }
func (p *DBConns) Report(b *testing.B, events int) {
	Report(b, "db-conns/txn", float64(p.opened()-p.start)/float64(events/EventsPerTxn))
}

// PrintSummary prints the ratios of this run's results to the floors and
// checks them against the targets of issue 15 (docs/performance.md). It
// prints nothing if no benchmark ran.
func PrintSummary(w io.Writer) {
	resultsMu.Lock()
	names := slices.Clone(order)
	resultsMu.Unlock()
	if len(names) == 0 {
		return
	}
	defer printPeerSummary(w) // last, whichever of the sections below returns early
	fmt.Fprintf(w, "\n== Summary: ratios to the floors, from this run ==\n")
	fmt.Fprintf(w, "%-52s %10s %8s %8s %8s %8s %9s\n", "transaction intake (50 events x ~600 B)", "events/s", "/nethttp", "/mautrix", "p50 ms", "p99 ms", "cpu us/ev")
	for _, name := range names {
		if !strings.HasPrefix(name, "BenchmarkIntake/") && !strings.HasPrefix(name, "BenchmarkEncryptedIntake/") {
			continue
		}
		c := strings.Split(name, "/")[1]
		rate, _ := Result(name, "events/s")
		p50, _ := Result(name, "p50-ms")
		p99, _ := Result(name, "p99-ms")
		cpu, _ := Result(name, "cpu-us/event")
		fmt.Fprintf(w, "%-52s %10.0f %8s %8s %8.2f %8.2f %9.1f\n", strings.TrimPrefix(name, "Benchmark"), rate,
			ratio(rate, "BenchmarkIntake/"+c+"/floor-nethttp"), ratio(rate, "BenchmarkIntake/"+c+"/floor-mautrix"), p50, p99, cpu)
	}
	for _, name := range names {
		if strings.HasPrefix(name, "BenchmarkMegolmDecrypt/") || strings.HasPrefix(name, "BenchmarkMegolmEncrypt/") {
			per, _ := Result(name, "us/event")
			cpu, _ := Result(name, "cpu-us/event")
			fmt.Fprintf(w, "%-52s %7.1f us/event, %7.1f cpu-us/event\n", strings.TrimPrefix(name, "Benchmark"), per, cpu)
		}
	}
	printCryptoTargets(w)
}

// printCryptoTargets checks the targets of issue 15 (CPU per event, as
// ratios to the goolm floors measured in the same run).
func printCryptoTargets(w io.Writer) {
	cpu := func(name string) (float64, bool) { return Result(name, "cpu-us/event") }
	decFloor, okDec := cpu("BenchmarkMegolmDecrypt/floor-goolm")
	if !okDec {
		return
	}
	fmt.Fprintf(w, "\nTarget: OlmMachine decryption on opsbot's crypto store <= 1.5 x the goolm decrypt floor (%.1f cpu-us/event)\n", decFloor)
	for _, db := range []string{"sqlite", "postgres"} {
		for _, variant := range []string{"", "-bare"} {
			if v, ok := cpu("BenchmarkMegolmDecrypt/machine-" + db + variant); ok {
				fmt.Fprintf(w, "  machine-%-14s %7.1f cpu-us/event = %4.2f x", db+variant, v, v/decFloor)
				if variant == "" {
					fmt.Fprintf(w, "  %s", verdict(v/decFloor <= 1.5))
				} else {
					fmt.Fprint(w, "  (mautrix's SQL store alone, for comparison)")
				}
				fmt.Fprintln(w)
			}
		}
	}
	encFloor, okEnc := cpu("BenchmarkMegolmEncrypt/floor-goolm")
	if okEnc {
		fmt.Fprintf(w, "\nEncrypting a reply, against the goolm encrypt floor (%.1f cpu-us/event)\n", encFloor)
		for _, db := range []string{"sqlite", "postgres"} {
			for _, variant := range []string{"", "-bare"} {
				if v, ok := cpu("BenchmarkMegolmEncrypt/machine-" + db + variant); ok {
					fmt.Fprintf(w, "  machine-%-14s %7.1f cpu-us/event = %4.2f x\n", db+variant, v, v/encFloor)
				}
			}
		}
	}
	fmt.Fprintf(w, "\nTarget: full encrypted pipeline (encrypted replies) <= 3 x the goolm decrypt floor\n")
	for _, db := range []string{"sqlite", "postgres"} {
		full, ok := cpu("BenchmarkEncryptedIntake/c=1/full-encrypted-" + db)
		if !ok {
			continue
		}
		fmt.Fprintf(w, "  c=1/full-encrypted-%-8s %7.1f cpu-us/event = %4.2f x  %s\n", db, full, full/decFloor, verdict(full/decFloor <= 3))
		if noreply, ok := cpu("BenchmarkEncryptedIntake/c=1/noreply-encrypted-" + db); ok {
			fmt.Fprintf(w, "  c=1/noreply-encrypted-%-5s %7.1f cpu-us/event = %4.2f x  (no reply: intake, inbox, decryption, skill, done)\n", db, noreply, noreply/decFloor)
		}
		// What the target leaves out: the plaintext pipeline's own cost
		// (an HTTP reply and durable marks per event) is already near 3 x.
		plain, okPlain := cpu("BenchmarkIntake/c=1/full-" + db)
		if okPlain && okEnc {
			over := full - plain
			fmt.Fprintf(w, "    the same pipeline in plaintext: %.1f cpu-us/event (%.2f x the decrypt floor); "+
				"encryption adds %.1f = %.2f x (decrypt + encrypt floors, %.1f)\n",
				plain, plain/decFloor, over, over/(decFloor+encFloor), decFloor+encFloor)
		}
	}
}

func ratio(v float64, floorName string) string {
	f, ok := Result(floorName, "events/s")
	if !ok || f == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f", v/f)
}

func verdict(met bool) string {
	if met {
		return "met"
	}
	return "NOT met"
}

// The peer (peer_bench_test.go): a matrix-bot-sdk appservice bot in a Node
// process of its own, answering the same load against the same stub
// homeserver, so that opsbot's full pipeline is compared with a bot people
// really write, in the same run.

// ProcessCPU returns the CPU time (user + system, all threads) that process
// pid has used so far, from /proc/<pid>/stat.
func ProcessCPU(pid int) (time.Duration, error) {
	st := procStat(pid)
	if st.ppid < 0 {
		return 0, fmt.Errorf("reading /proc/%d/stat failed (has the process exited?)", pid)
	}
	return st.own, nil
}

// PeakRSS returns the peak resident set size of process pid (VmHWM in
// /proc/<pid>/status), in bytes.
func PeakRSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status: VmHWM: %w", pid, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no VmHWM", pid)
}

// NewPeerHomeserver starts the stub homeserver of NewHomeserver for a bot
// that asks which rooms it is in before it sends, as matrix-bot-sdk's
// intents do (GET /joined_rooms, then cached): it answers that with the
// benchmark rooms, and everything else as NewHomeserver's stub does.
func NewPeerHomeserver(b testing.TB, tracker *Tracker) *Homeserver {
	hs := &Homeserver{Tracker: tracker}
	var joined struct {
		JoinedRooms []string `json:"joined_rooms"`
	}
	for i := range Rooms {
		joined.JoinedRooms = append(joined.JoinedRooms, RoomID(i))
	}
	answer, err := json.Marshal(joined)
	if err != nil {
		b.Fatal(err)
	}
	hs.URL, hs.Conns = Serve(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/joined_rooms") {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(answer)
			return
		}
		hs.serve(w, r)
	}))
	return hs
}

// Acknowledged counts every event of transaction n as handled on the bot's
// side, for a bot without an inbox (the peer), tracked with replies: such a
// bot answers the transaction's PUT once it has handed each event to its
// handlers, so its 200 stands where opsbot's done marks do. Done then waits
// for the replies too: acknowledged and answered.
func (t *Tracker) Acknowledged(n int) {
	if n < 0 || n >= len(t.steps) {
		return
	}
	for range EventsPerTxn {
		t.step(n)
	}
}

// peerBenchmark is the name of the peer's benchmark at concurrency c
// (BenchmarkPeer in peer_bench_test.go), whose results printPeerSummary
// compares opsbot's full pipeline with.
func peerBenchmark(c int) string { return fmt.Sprintf("BenchmarkPeer/c=%d/matrix-bot-sdk", c) }

// printPeerSummary prints opsbot's full plaintext pipeline as a ratio to the
// peer, at the concurrencies both ran in this run, and the target of issue
// 15 (at least twice the peer's events/s, opsbot alone being durable). If
// opsbot's pipeline did not run (the benchmarks were filtered), it prints
// the peer's numbers alone.
func printPeerSummary(w io.Writer) {
	var cs []int
	for _, c := range []int{1, 4} {
		if _, ok := Result(peerBenchmark(c), "events/s"); ok {
			cs = append(cs, c)
		}
	}
	if len(cs) == 0 {
		return
	}
	fmt.Fprintf(w, "\n== The peer: a matrix-bot-sdk appservice bot (Node, plaintext, memory only), same load, same stub homeserver ==\n")
	fmt.Fprintf(w, "%-40s %10s %8s %8s %12s %12s %9s\n", "", "events/s", "p50 ms", "p99 ms", "cpu us/ev", "harness us", "peak RSS")
	for _, c := range cs {
		name := peerBenchmark(c)
		rate, _ := Result(name, "events/s")
		p50, _ := Result(name, "p50-ms")
		p99, _ := Result(name, "p99-ms")
		cpu, _ := Result(name, "peer-cpu-us/event")
		harness, _ := Result(name, "cpu-us/event")
		rss, _ := Result(name, "peer-rss-MiB")
		fmt.Fprintf(w, "%-40s %10.0f %8.2f %8.2f %12.1f %12.1f %5.0f MiB\n", strings.TrimPrefix(name, "Benchmark"), rate, p50, p99, cpu, harness, rss)
	}
	fmt.Fprintf(w, "(cpu us/ev: the node process; harness us: this process, i.e. the driver and the stub homeserver, per event)\n")

	var lines []string
	for _, c := range cs {
		peerRate, _ := Result(peerBenchmark(c), "events/s")
		peerCPU, _ := Result(peerBenchmark(c), "peer-cpu-us/event")
		harness, _ := Result(peerBenchmark(c), "cpu-us/event")
		for _, db := range []string{"sqlite", "postgres"} {
			name := fmt.Sprintf("BenchmarkIntake/c=%d/full-%s", c, db)
			rate, ok := Result(name, "events/s")
			if !ok {
				continue
			}
			// opsbot's pipeline runs in this process, beside the same driver
			// and stub: its own CPU is this process's minus the harness's
			// (measured in the peer's run), plus the Postgres server's.
			cpu, _ := Result(name, "cpu-us/event")
			pg, _ := Result(name, "pg-cpu-us/event")
			own := cpu - harness + pg
			lines = append(lines, fmt.Sprintf("  %-22s %8.0f / %8.0f events/s = %5.2f x  %-8s cpu %6.1f / %6.1f us/event = %5.2f x  (with the harness: %.1f us, %.2f x)",
				fmt.Sprintf("c=%d full-%s", c, db), rate, peerRate, rate/peerRate, verdict(rate >= 2*peerRate), own, peerCPU, own/peerCPU, cpu+pg, (cpu+pg)/peerCPU))
		}
	}
	if len(lines) == 0 {
		return
	}
	fmt.Fprintf(w, "\nTarget: opsbot's full plaintext pipeline >= 2 x the peer's events/s (end to end: acknowledged and answered; opsbot alone durable)\n")
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
	if rss, err := PeakRSS(os.Getpid()); err == nil {
		fmt.Fprintf(w, "  (opsbot has no RSS of its own here: this test process, holding every benchmark of the run with the driver and the stub, peaked at %.0f MiB)\n", float64(rss)/(1<<20))
	}
}
