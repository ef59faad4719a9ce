package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opsbot/opsbot/integration/harness"
)

// TestOwnBinary runs the example of docs/skills.md, "Your own skills, your
// own binary": a module of its own (examples/hello) that builds opsbot with
// a skill of its own. In a real room its skill answers beside a built-in
// one, with the skill's config section read like any other.
func TestOwnBinary(t *testing.T) {
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "opsbot-hello")
	build := exec.Command("go", "build", "-tags", "goolm", "-o", bin, ".")
	build.Dir = filepath.Join(root, "examples", "hello")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building examples/hello: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "version").Output(); err != nil || !strings.Contains(string(out), "hello-1.0") {
		t.Fatalf("opsbot-hello version: %v %q", err, out)
	}
	bots := "\n  - localpart: opsbot\n    skills: [hello, ping]\n"
	w := newWorldWith(t, worldOptions{DB: "sqlite", Bots: bots, Extra: "skills:\n  hello:\n    greeting: Good morning\n", Binary: bin})
	alice := w.HS.RegisterUser(t, "alice")
	room := alice.CreateRoom(t, harness.RoomOptions{Invite: []string{botID}})
	botJoined(t, alice, room, botID)
	alice.SendText(t, room, "!hello")
	if got := botEvent(t, alice, room, "m.room.message").Body(); got != "Good morning, alice!" {
		t.Fatalf("!hello answered %q", got)
	}
	alice.SendText(t, room, "!ping")
	if got := botEvent(t, alice, room, "m.room.message").Body(); !strings.HasPrefix(got, "pong") {
		t.Fatalf("!ping answered %q", got)
	}
}
