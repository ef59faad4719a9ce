//go:build bench

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opsbot/opsbot/integration/harness"
	"github.com/opsbot/opsbot/integration/peers"
)

// The end-to-end and footprint measurements of docs/performance.md, run by
// make bench (build tag bench). They print their results; they assert only
// that everything was answered.

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*p)]
}

func report(t *testing.T, name string, d []time.Duration) {
	t.Logf("RESULT %-34s n=%d p50=%v p99=%v", name, len(d), percentile(d, 0.5).Round(100*time.Microsecond), percentile(d, 0.99).Round(100*time.Microsecond))
}

const noRateLimit = "permissions:\n  rate_limit: {user_per_minute: 0, room_per_minute: 0}\n"

// 200 commands from a matrix-js-sdk user, encrypted and plain, beside
// Dendrite's own user-to-user delivery between two js-sdk users, in one run.
func TestBenchEndToEnd(t *testing.T) {
	n := envInt("OPSBOT_BENCH_COMMANDS", 200)
	w := newWorld(t, "sqlite", defaultBots, noRateLimit)
	alice := w.HS.RegisterUser(t, "alice")
	bob := w.HS.RegisterUser(t, "bob")
	ja := peers.StartJS(t)
	ja.Login(w.HS.URL, alice.ID, alice.Password, "BENCHA")
	jb := peers.StartJS(t)
	jb.Login(w.HS.URL, bob.ID, bob.Password, "BENCHB")
	for _, encrypted := range []bool{true, false} {
		room := ja.CreateRoom(encrypted, botID)
		botJoined(t, alice, room, botID)
		var lat []time.Duration
		for i := 0; i < n; i++ {
			start := time.Now()
			ja.Send(room, fmt.Sprintf("!echo %d", i))
			if m := ja.WaitMessage(room, botID, wait); m.Body != strconv.Itoa(i) {
				t.Fatalf("got %+v", m)
			}
			lat = append(lat, time.Since(start))
		}
		report(t, fmt.Sprintf("bot round trip encrypted=%v", encrypted), lat)
	}
	for _, encrypted := range []bool{true, false} {
		room := ja.CreateRoom(encrypted, bob.ID)
		jb.Join(room)
		var lat []time.Duration
		for i := 0; i < n; i++ {
			start := time.Now()
			ja.Send(room, fmt.Sprintf("hello %d", i))
			if m := jb.WaitMessage(room, alice.ID, wait); m.Body != fmt.Sprintf("hello %d", i) {
				t.Fatalf("got %+v", m)
			}
			lat = append(lat, time.Since(start))
		}
		report(t, fmt.Sprintf("user to user encrypted=%v", encrypted), lat)
	}
}

// rssKB reads a process's resident set size.
func rssKB(t *testing.T, pid int) int {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			return kb
		}
	}
	return 0
}

// Footprint: resident memory and start-up time with 1, 10 and 100 bots,
// each cross-signed with its room keys backed up, and with one bot in 1,000
// rooms. Start-up is the restart's own account: process start to "opsbot is
// running" (every device logged in, its identity and backup checked).
func TestBenchFootprint(t *testing.T) {
	for _, bots := range []int{1, 10, 100} {
		t.Run(fmt.Sprintf("bots=%d", bots), func(t *testing.T) {
			var b strings.Builder
			for i := 0; i < bots; i++ {
				fmt.Fprintf(&b, "\n  - localpart: bot%03d\n    skills: [ping, echo]\n", i)
			}
			w := newWorld(t, "sqlite", b.String(), trustConfig(""))
			w.Bot.WaitForLogs(t, 10*time.Minute, 1, "opsbot is running")
			if n := w.Bot.CountLog("Bot identity is cross-signed"); n != bots {
				t.Fatalf("%d of %d bots cross-signed", n, bots)
			}
			w.Bot.Stop()
			w.Bot.Start()
			w.Bot.WaitForLogs(t, time.Minute, 2, "opsbot is running")
			if n := w.Bot.CountLog("Bot identity is cross-signed"); n != 2*bots {
				t.Fatalf("%d of %d bots cross-signed after the restart", n-bots, bots)
			}
			time.Sleep(2 * time.Second) // let the devices' first syncs settle
			t.Logf("RESULT footprint bots=%-4d start-up (restart, cross-signed devices exist)=%s ms rss=%d MB (Go heap in use %.1f MB)",
				bots, w.Bot.LastLogField(t, "opsbot is running", "start_up"), rssKB(t, w.Bot.cmd.Process.Pid)/1024,
				w.Bot.Metric(t, "go_memstats_heap_inuse_bytes")/1e6)
		})
	}
	t.Run("rooms=1000", func(t *testing.T) {
		rooms := envInt("OPSBOT_BENCH_ROOMS", 1000)
		w := newWorld(t, "sqlite", defaultBots, "")
		alice := w.HS.RegisterUser(t, "alice")
		for i := 0; i < rooms; i++ {
			alice.CreateRoom(t, harness.RoomOptions{Invite: []string{botID}})
		}
		deadline := time.Now().Add(10 * time.Minute)
		for {
			var joined struct {
				Rooms []string `json:"joined_rooms"`
			}
			w.HS.AppServiceUser(w.Bot.Cfg.AppService.ASToken, botID).Get(t, "/_matrix/client/v3/joined_rooms", &joined)
			if len(joined.Rooms) >= rooms {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("bot joined only %d of %d rooms", len(joined.Rooms), rooms)
			}
			time.Sleep(time.Second)
		}
		w.Bot.Stop()
		start := time.Now()
		w.Bot.Start()
		took := time.Since(start)
		time.Sleep(2 * time.Second)
		t.Logf("RESULT footprint rooms=%d start-up=%v rss=%d MB", rooms, took.Round(time.Millisecond), rssKB(t, w.Bot.cmd.Process.Pid)/1024)
	})
}
