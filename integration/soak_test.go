//go:build soak

package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// This file is the long fault-injection run (make soak), built only with
// the soak tag. See docs/performance.md for what it has shown.

// SIGKILL at random moments during a stream of commands: after the
// restarts every command is answered exactly once.
func TestKillUnderLoad(t *testing.T) {
	n := envInt("OPSBOT_SOAK_COMMANDS", 1000)
	kills := envInt("OPSBOT_SOAK_KILLS", 10)
	// One person sends every command: no rate limit.
	w := newWorld(t, "sqlite", defaultBots, "permissions:\n  rate_limit:\n    user_per_minute: 0\n    room_per_minute: 0\n")
	alice := w.HS.RegisterUser(t, "alice")
	room := joinedRoom(t, alice, botID)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < n; i++ {
			if err := alice.Do(context.Background(), "PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/load-%d", room, i),
				map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("!echo load %d", i)}, nil); err != nil {
				t.Errorf("sending command %d: %v", i, err)
				return
			}
			time.Sleep(time.Duration(10+rand.IntN(40)) * time.Millisecond)
		}
	}()
	for k := 0; k < kills; k++ {
		time.Sleep(time.Duration(100+rand.IntN(900)) * time.Millisecond)
		w.Bot.Kill()
		w.Bot.Start()
	}
	<-done
	checkExactlyOnce(t, collectAnswers(t, w.HS, alice, room, n, 10*time.Minute), n)
}
