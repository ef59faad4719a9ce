package bench_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opsbot/opsbot/integration/bench"
)

// peerDir holds the peer: bot.js and its pinned matrix-bot-sdk (make
// bench-peer installs it).
const peerDir = "peer"

// BenchmarkPeer measures the peer of opsbot's full plaintext pipeline: a
// matrix-bot-sdk appservice bot (peer/bot.js, a Node process) that answers
// the same transactions as BenchmarkIntake's full-* variants, one reply per
// message through its intent, sent to the same stub homeserver, at the same
// concurrencies. A transaction counts once the peer has acknowledged it and
// every one of its events has its reply, as for opsbot. Besides Drive's
// metrics (whose cpu-us/event is this process's: the driver and the stub)
// it reports the node process's CPU per event and its peak RSS.
// bench.PrintSummary prints opsbot's pipeline as a ratio to it.
func BenchmarkPeer(b *testing.B) {
	for _, c := range []int{1, 4} {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) {
			b.Run("matrix-bot-sdk", func(b *testing.B) { benchPeer(b, c) })
		})
	}
}

func benchPeer(b *testing.B, concurrency int) {
	run := bench.NewRun()
	tracker := bench.NewTracker(run, warmup+b.N, true)
	hs := bench.NewPeerHomeserver(b, tracker)
	peer := startPeer(b, hs.URL, tracker)
	txns := bench.NewPlainTxns(run)
	b.SetBytes(int64(txns.Size()))
	bench.Drive(b, bench.Load{URL: peer.url, Concurrency: concurrency, Warmup: warmup, Body: txns.Body,
		Done: func(n int) error {
			tracker.Acknowledged(n) // Drive calls Done after the 200
			return tracker.Done(n)
		},
		Extra: bench.Probes{&bench.ConnProbe{Name: "hs", Conns: hs.Conns}, peer}})
	if err := tracker.Check(); err != nil {
		b.Fatal(err)
	}
	if got, want := hs.Sends.Load(), int64((warmup+b.N)*bench.EventsPerTxn); got != want {
		b.Fatalf("%d replies sent, want %d", got, want)
	}
}

// peerProcess is a running peer; as a bench.Probe it reports the node
// process's CPU per event over the timed part and its peak RSS.
type peerProcess struct {
	url      string
	cmd      *exec.Cmd
	output   *tailBuffer
	cpuStart time.Duration
	startErr error
}

// startPeer starts node peer/bot.js against the stub homeserver at hsURL
// and waits until it listens. It is stopped when b ends; if it exits before,
// tracker fails, so the benchmark stops at once instead of waiting for
// replies that cannot come. A missing node or SDK fails the benchmark.
func startPeer(b *testing.B, hsURL string, tracker *bench.Tracker) *peerProcess {
	b.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		b.Fatalf("peer: node (Node.js 20 or later) is not on $PATH: %v", err)
	}
	if _, err := os.Stat(filepath.Join(peerDir, "node_modules", "matrix-bot-sdk", "package.json")); err != nil {
		b.Fatalf("peer: matrix-bot-sdk is not installed in integration/bench/%s (%v); install it with\n\tmake bench-peer\nfrom the repository root (npm ci --prefix integration/bench/peer --ignore-scripts)", peerDir, err)
	}
	p := &peerProcess{output: &tailBuffer{max: 16 << 10}}
	listening := make(chan string, 1)
	p.cmd = exec.Command(node, filepath.Join(peerDir, "bot.js"),
		"--homeserver", hsURL, "--domain", bench.Domain, "--port", "0",
		"--localpart", strings.TrimPrefix(strings.Split(bench.Bot, ":")[0], "@"))
	p.cmd.Env = append(os.Environ(), "PEER_HS_TOKEN="+bench.HSToken, "PEER_AS_TOKEN="+bench.ASToken, "NODE_ENV=production")
	p.cmd.Stdout = &listenWatcher{out: p.output, addr: listening}
	p.cmd.Stderr = p.output
	if err := p.cmd.Start(); err != nil {
		b.Fatalf("peer: starting node: %v", err)
	}
	var stopping atomic.Bool
	exited := make(chan struct{})
	go func() {
		err := p.cmd.Wait()
		if !stopping.Load() {
			tracker.Fail(fmt.Errorf("peer: node exited (%v); its output:\n%s", err, p.output))
		}
		close(exited)
	}()
	b.Cleanup(func() {
		stopping.Store(true)
		// Our child, by its pid: SIGTERM (it exits normally), then SIGKILL.
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = p.cmd.Process.Kill()
			<-exited
		}
	})
	select {
	case addr := <-listening:
		p.url = "http://" + addr
	case <-exited:
		b.Fatalf("peer: node exited before listening; its output:\n%s", p.output)
	case <-time.After(30 * time.Second):
		b.Fatalf("peer: not listening after 30 s; its output:\n%s", p.output)
	}
	return p
}

func (p *peerProcess) Start() {
	p.cpuStart, p.startErr = bench.ProcessCPU(p.cmd.Process.Pid)
}

func (p *peerProcess) Report(b *testing.B, events int) {
	cpu, err := bench.ProcessCPU(p.cmd.Process.Pid)
	rss, err2 := bench.PeakRSS(p.cmd.Process.Pid)
	if err := errors.Join(p.startErr, err, err2); err != nil {
		b.Fatalf("peer: %v; its output:\n%s", err, p.output)
	}
	bench.Report(b, "peer-cpu-us/event", float64((cpu-p.cpuStart).Nanoseconds())/1e3/float64(events))
	bench.Report(b, "peer-rss-MiB", float64(rss)/(1<<20))
}

// listenWatcher passes the peer's stdout on to out and sends the address of
// its "listening on ADDR" line to addr, once.
type listenWatcher struct {
	out  *tailBuffer
	addr chan<- string
	line []byte
	sent bool
}

func (w *listenWatcher) Write(p []byte) (int, error) {
	_, _ = w.out.Write(p)
	if w.sent {
		return len(p), nil
	}
	w.line = append(w.line, p...)
	for {
		i := bytes.IndexByte(w.line, '\n')
		if i < 0 {
			return len(p), nil
		}
		if addr, ok := strings.CutPrefix(string(w.line[:i]), "listening on "); ok {
			w.addr <- strings.TrimSpace(addr)
			w.sent, w.line = true, nil
			return len(p), nil
		}
		w.line = w.line[i+1:]
	}
}

// tailBuffer keeps the last max bytes written to it (the peer's output, for
// error messages), safe for the two writers exec uses.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
