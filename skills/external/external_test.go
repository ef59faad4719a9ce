package external

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/skilltest"
)

const (
	secret = "s3cret-s3cret-s3cret"
	bot    = id.UserID("@opsbot:example.org")
	room   = id.RoomID("!room:example.org")
	alice  = id.UserID("@alice:example.org")
)

// skillServer is an external skill under test: it checks each request's
// signature the way a real skill must, records it, and answers with answer.
type skillServer struct {
	t   *testing.T
	srv *httptest.Server

	mu       sync.Mutex
	requests []Request
	bodies   [][]byte
	headers  []http.Header
	answer   func(n int, req Request) (status int, body string)
}

func newSkillServer(t *testing.T, answer func(n int, req Request) (int, string)) *skillServer {
	ss := &skillServer{t: t, answer: answer}
	ss.srv = httptest.NewServer(http.HandlerFunc(ss.serve))
	t.Cleanup(ss.srv.Close)
	return ss
}

func (ss *skillServer) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	// Recompute the signature independently of Sign.
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	if !hmac.Equal([]byte(r.Header.Get("X-Opsbot-Signature")), []byte(want)) {
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var req Request
	if err := json.Unmarshal(body, &req); err != nil {
		http.Error(w, "bad json", http.StatusBadRequest)
		return
	}
	ss.mu.Lock()
	ss.requests = append(ss.requests, req)
	ss.bodies = append(ss.bodies, body)
	ss.headers = append(ss.headers, r.Header.Clone())
	n := len(ss.requests)
	ss.mu.Unlock()
	status, text := ss.answer(n, req)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, text)
}

func (ss *skillServer) count() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.requests)
}

func (ss *skillServer) last() Request {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if len(ss.requests) == 0 {
		ss.t.Fatal("the skill got no request")
	}
	return ss.requests[len(ss.requests)-1]
}

func answerWith(body string) func(int, Request) (int, string) {
	return func(int, Request) (int, string) { return 200, body }
}

// rig is an engine running one external skill for one bot, with a fake
// sender and memory and a log to read the handler errors from.
type rig struct {
	privileges skills.Privileges
	t          *testing.T
	skill      *Skill
	engine     *skills.Engine
	sender     *skilltest.Sender
	memory     *skilltest.MemoryStore
	log        *syncBuffer
	n          int
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func baseConfig(url string) Config {
	return Config{
		Name:     "weather",
		URL:      url,
		Secret:   secret,
		Commands: []Command{{Pattern: "weather {city...?}", Help: "the weather"}, {Pattern: "forecast {days} {city...}"}},
		Regexes:  []string{`(?i)\bthanks\b`, `(?i)^temp (?P<unit>[cf])$`},
		Events:   []string{"m.reaction", "m.room.member"},
		Timeout:  skills.Duration(2 * time.Second),
	}
}

func newRig(t *testing.T, c Config, tweak func(*Skill)) *rig {
	t.Helper()
	r, err := setupRig(t, c, tweak, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func setupRig(t *testing.T, c Config, tweak func(*Skill), section *string) (*rig, error) {
	r := &rig{t: t, sender: &skilltest.Sender{}, memory: skilltest.NewMemory(), log: &syncBuffer{}}
	log := zerolog.New(r.log)
	r.skill = FromConfig([]Config{c}, log)[0].(*Skill)
	r.skill.backoff = time.Millisecond
	if tweak != nil {
		tweak(r.skill)
	}
	sections := map[string]yaml.Node{}
	if section != nil {
		var root yaml.Node
		if err := yaml.Unmarshal([]byte(*section), &root); err != nil {
			t.Fatal(err)
		}
		sections[c.Name] = *root.Content[0]
	}
	var err error
	r.engine, err = skills.NewEngine(skills.Options{Sender: r.sender, Media: r.sender, Rooms: r.sender, Memory: r.memory, Log: log,
		Privileges: func(string) skills.Privileges { return r.privileges }},
		[]skills.Skill{r.skill}, sections, []skills.BotSpec{{ID: bot, Prefix: "!", Skills: []string{c.Name}, ConfigKey: "bots[0]"}})
	return r, err
}

// handle runs one event through the engine and returns what the bot sent
// and the handler's error from the log ("" if none).
func (r *rig) handle(evt *event.Event) ([]skilltest.Action, string) {
	r.t.Helper()
	before := len(r.sender.Actions)
	logBefore := len(r.log.String())
	r.engine.Handle(context.Background(), evt, []id.UserID{bot})
	var errText string
	for _, line := range strings.Split(r.log.String()[logBefore:], "\n") {
		var entry map[string]any
		if json.Unmarshal([]byte(line), &entry) == nil && entry["message"] == "Skill handler failed" {
			errText, _ = entry["error"].(string)
		}
	}
	return r.sender.Actions[before:], errText
}

func (r *rig) say(body string) ([]skilltest.Action, string) {
	r.t.Helper()
	r.n++
	return r.handle(&event.Event{
		Type: event.EventMessage, ID: id.EventID(fmt.Sprintf("$msg%d", r.n)), RoomID: room, Sender: alice, Timestamp: 1700000000000 + int64(r.n),
		Content: event.Content{Parsed: &event.MessageEventContent{MsgType: event.MsgText, Body: body}},
	})
}

func bodies(actions []skilltest.Action) []string {
	var out []string
	for _, a := range actions {
		out = append(out, a.Body())
	}
	return out
}

func TestRequestIsSignedAndDescribesTheEvent(t *testing.T) {
	ss := newSkillServer(t, answerWith(`{"actions":[]}`))
	r := newRig(t, baseConfig(ss.srv.URL+"/hook?token=abc"), nil)
	if err := r.memory.Memory("weather", room).Put(context.Background(), "last_city", "Berlin"); err != nil {
		t.Fatal(err)
	}

	// An encrypted reply in a thread, as the pipeline hands it over after
	// decrypting: content as the sender wrote it.
	raw := `{"msgtype":"m.text","body":"> <@bob:example.org> hi\n\n!weather Paris  ","m.relates_to":{"m.in_reply_to":{"event_id":"$orig"}}}`
	evt := &event.Event{Type: event.EventMessage, ID: "$q1", RoomID: room, Sender: alice, Timestamp: 1700000000123,
		Content: event.Content{VeryRaw: json.RawMessage(raw)}}
	evt.Mautrix.WasEncrypted = true
	if err := evt.Content.ParseRaw(evt.Type); err != nil {
		t.Fatal(err)
	}
	sent, errText := r.handle(evt)
	if errText != "" || len(sent) != 0 {
		t.Fatalf("sent %v, error %q", bodies(sent), errText)
	}
	req := ss.last()
	h := ss.headers[0]
	if h.Get("Content-Type") != "application/json" || h.Get("X-Opsbot-Skill") != "weather" ||
		h.Get("X-Opsbot-Timestamp") != strconv.FormatInt(req.Timestamp, 10) || h.Get("X-Opsbot-Delivery") != req.DeliveryID {
		t.Errorf("headers: %v", h)
	}
	if !Verify(secret, ss.bodies[0], h.Get("X-Opsbot-Signature")) || Verify("other-secret-0123456", ss.bodies[0], h.Get("X-Opsbot-Signature")) {
		t.Error("Verify disagrees with the server's check")
	}
	if d := time.Since(time.Unix(req.Timestamp, 0)); d < 0 || d > time.Minute {
		t.Errorf("timestamp %d is not now", req.Timestamp)
	}
	if req.Version != 1 || req.Skill != "weather" || req.Bot != string(bot) || req.RoomID != string(room) || req.DeliveryID == "" {
		t.Errorf("request: %+v", req)
	}
	e := req.Event
	if e.EventID != "$q1" || e.Type != "m.room.message" || e.Sender != string(alice) || e.OriginServerTS != 1700000000123 ||
		e.Body != "!weather Paris" || !e.Encrypted || e.StateKey != nil {
		t.Errorf("event: %+v", e)
	}
	if !bytes.Equal(e.Content, []byte(raw)) {
		t.Errorf("content %s, want the decrypted content as sent %s", e.Content, raw)
	}
	if string(e.RelatesTo) != `{"m.in_reply_to":{"event_id":"$orig"}}` {
		t.Errorf("relates_to %s", e.RelatesTo)
	}
	m := req.Match
	if m.Kind != "command" || m.Pattern != "weather {city...?}" || m.Command != "weather" || m.Args["city"] != "Paris" || m.RegexGroups != nil {
		t.Errorf("match: %+v", m)
	}
	if string(req.Memory) != `{"last_city":"Berlin"}` || req.MemoryTruncated {
		t.Errorf("memory %s truncated=%v", req.Memory, req.MemoryTruncated)
	}

	// A regex match carries its groups; named ones are args too.
	r.say("TEMP c")
	m = ss.last().Match
	if m.Kind != "regex" || m.Pattern != `(?i)^temp (?P<unit>[cf])$` || m.Args["unit"] != "c" || len(m.RegexGroups) != 2 || m.RegexGroups[0] != "TEMP c" {
		t.Errorf("regex match: %+v", m)
	}
	if e := ss.last().Event; e.Encrypted || e.RelatesTo != nil || string(e.Content) != `{"msgtype":"m.text","body":"TEMP c"}` {
		t.Errorf("plain event: %+v (content %s)", e, e.Content)
	}

	// The same event handled again (after a crash) has the same delivery ID.
	first := ss.requests[0].DeliveryID
	r.handle(evt)
	if got := ss.last().DeliveryID; got != first {
		t.Errorf("delivery ID changed on a repeat: %s then %s", first, got)
	}
}

func TestMemoryTooLargeIsLeftOut(t *testing.T) {
	ss := newSkillServer(t, answerWith(`{"actions":[]}`))
	r := newRig(t, baseConfig(ss.srv.URL), nil)
	mem := r.memory.Memory("weather", room)
	big := strings.Repeat("x", 40<<10)
	_ = mem.Put(context.Background(), "a", big)
	r.say("!weather")
	if req := ss.last(); string(req.Memory) != `{"a":"`+big+`"}` || req.MemoryTruncated {
		t.Fatalf("40 KiB memory: truncated=%v len=%d", req.MemoryTruncated, len(req.Memory))
	}
	_ = mem.Put(context.Background(), "b", big)
	r.say("!weather")
	if req := ss.last(); req.Memory != nil || !req.MemoryTruncated {
		t.Fatalf("80 KiB memory: truncated=%v len=%d", req.MemoryTruncated, len(req.Memory))
	}
	if !strings.Contains(string(ss.bodies[1]), `"memory_truncated":true`) || strings.Contains(string(ss.bodies[1]), `"memory":`) {
		t.Errorf("body: %.200s", ss.bodies[1])
	}
}

func TestEveryAction(t *testing.T) {
	file := base64.StdEncoding.EncodeToString([]byte("hello file"))
	ss := newSkillServer(t, answerWith(`{"version":1,"actions":[
		{"type":"reply","text":"Weather for Paris: sunny","save_id_as":"last_reply"},
		{"type":"reply","text":"plain","html":"<b>bold</b>"},
		{"type":"respond","text":"to the room"},
		{"type":"react","key":"👍"},
		{"type":"edit","event_id":"$old","text":"fixed"},
		{"type":"redact","event_id":"$spam","reason":"spam"},
		{"type":"send_file","name":"report.txt","mimetype":"text/plain","data_base64":"`+file+`"},
		{"type":"set_memory","key":"last_city","value":{"name":"Paris","n":[1,2]}},
		{"type":"set_memory","key":"gone","value":true},
		{"type":"delete_memory","key":"gone"}
	]}`))
	r := newRig(t, baseConfig(ss.srv.URL), nil)
	// "$old" is the bot's own message; "$spam" someone else's, which this
	// skill may redact (permissions.skills.weather.redact_others).
	r.sender.Events = map[id.EventID]*event.Event{"$old": {Sender: bot}, "$spam": {Sender: "@spammer:x"}}
	r.privileges.RedactOthers = true
	sent, errText := r.say("!weather Paris")
	if errText != "" {
		t.Fatal(errText)
	}
	if len(sent) != 7 {
		t.Fatalf("sent %d events: %v", len(sent), bodies(sent))
	}
	rel := func(a skilltest.Action) map[string]any { m, _ := a.Content["m.relates_to"].(map[string]any); return m }
	if a := sent[0]; a.Type != event.EventMessage || a.Body() != "Weather for Paris: sunny" || a.Content["msgtype"] != "m.notice" ||
		rel(a)["m.in_reply_to"].(map[string]any)["event_id"] != "$msg1" {
		t.Errorf("reply: %v", a.Content)
	}
	if a := sent[1]; a.Content["formatted_body"] != "<b>bold</b>" || a.Content["format"] != "org.matrix.custom.html" {
		t.Errorf("html reply: %v", a.Content)
	}
	if a := sent[2]; a.Body() != "to the room" || rel(a) != nil {
		t.Errorf("respond: %v", a.Content)
	}
	if a := sent[3]; a.Type != event.EventReaction || rel(a)["key"] != "👍" || rel(a)["event_id"] != "$msg1" {
		t.Errorf("react: %v", a.Content)
	}
	if a := sent[4]; rel(a)["rel_type"] != "m.replace" || rel(a)["event_id"] != "$old" || a.Content["m.new_content"].(map[string]any)["body"] != "fixed" {
		t.Errorf("edit: %v", a.Content)
	}
	if a := sent[5]; a.Type != event.EventRedaction || a.Content["redacts"] != "$spam" || a.Content["reason"] != "spam" {
		t.Errorf("redact: %v", a.Content)
	}
	if a := sent[6]; a.Content["msgtype"] != "m.file" || a.Body() != "report.txt" ||
		string(r.sender.Files[id.ContentURIString(a.Content["url"].(string))]) != "hello file" {
		t.Errorf("send_file: %v", a.Content)
	}
	mem := r.memory.Memory("weather", room)
	var city map[string]any
	if found, _ := mem.Get(context.Background(), "last_city", &city); !found || city["name"] != "Paris" {
		t.Errorf("memory last_city: %v", city)
	}
	var lastReply string
	if found, _ := mem.Get(context.Background(), "last_reply", &lastReply); !found || lastReply != "$sent1" {
		t.Errorf("save_id_as stored %q", lastReply)
	}
	if keys, _ := mem.Keys(context.Background()); strings.Join(keys, ",") != "last_city,last_reply" {
		t.Errorf("memory keys %v", keys)
	}
	// Each action has its own transaction ID, derived from the trigger.
	seen := map[string]bool{}
	for _, a := range sent {
		if seen[a.TxnID] || a.TxnID == "" {
			t.Errorf("transaction ID %q repeated", a.TxnID)
		}
		seen[a.TxnID] = true
	}
	// The next request carries the memory.
	r.say("!weather")
	if got := string(ss.last().Memory); got != `{"last_city":{"name":"Paris","n":[1,2]},"last_reply":"$sent1"}` {
		t.Errorf("memory sent: %s", got)
	}
}

func TestNothingToDo(t *testing.T) {
	for _, answer := range []struct {
		status int
		body   string
	}{{204, ""}, {200, `{"actions":[]}`}, {200, `{"version":1,"actions":[]}`}, {204, "ignored"}} {
		ss := newSkillServer(t, func(int, Request) (int, string) { return answer.status, answer.body })
		r := newRig(t, baseConfig(ss.srv.URL), nil)
		if sent, errText := r.say("thanks!"); len(sent) != 0 || errText != "" {
			t.Errorf("%d %q: sent %v, error %q", answer.status, answer.body, bodies(sent), errText)
		}
	}
}

func TestNonsenseAnswers(t *testing.T) {
	many := `{"actions":[` + strings.TrimSuffix(strings.Repeat(`{"type":"react","key":"x"},`, 21), ",") + `]}`
	cases := []struct {
		name, body, want string
		status           int
	}{
		{"not json", `<html>oops</html>`, `the body is not JSON: invalid character '<'`, 200},
		{"truncated json", `{"actions":[`, `the body is not JSON: unexpected end of JSON input`, 200},
		{"empty", ``, `the body is empty (answer {"actions":[]} or status 204 when there is nothing to do)`, 200},
		{"array", `[{"type":"reply","text":"x"}]`, `the body is an array, not an object like {"actions":[...]}`, 200},
		{"no actions", `{"action":[]}`, `unknown field "action"`, 200},
		{"missing actions", `{}`, `missing "actions"`, 200},
		{"actions object", `{"actions":{"type":"reply"}}`, `"actions" must be an array, got an object`, 200},
		{"version", `{"version":2,"actions":[]}`, `"version" is 2; this opsbot speaks version 1`, 200},
		{"too many", many, `21 actions, more than the 20 allowed`, 200},
		{"unknown type", `{"actions":[{"type":"reply","text":"a"},{"type":"react","key":"b"},{"type":"replay"}]}`,
			`actions[2]: unknown type "replay" (one of delete_memory, edit, react, redact, reply, respond, send_file, set_memory)`, 200},
		{"no type", `{"actions":[{"text":"hi"}]}`, `actions[0]: missing "type"`, 200},
		{"type number", `{"actions":[{"type":3}]}`, `actions[0]: "type" must be a string, got a number`, 200},
		{"action string", `{"actions":["reply"]}`, `actions[0]: must be an object, got a string`, 200},
		{"missing text", `{"actions":[{"type":"reply"}]}`, `actions[0] (reply): missing "text"`, 200},
		{"empty text", `{"actions":[{"type":"respond","text":"  "}]}`, `actions[0] (respond): "text" must not be empty`, 200},
		{"text number", `{"actions":[{"type":"reply","text":42}]}`, `actions[0] (reply): "text" must be a string, got a number`, 200},
		{"unknown field", `{"actions":[{"type":"react","emoji":"x"}]}`, `actions[0] (react): unknown field "emoji" (react takes key, save_id_as)`, 200},
		{"bad event id", `{"actions":[{"type":"redact","event_id":"abc"}]}`, `actions[0] (redact): "event_id" must be an event ID like "$abc...", got "abc"`, 200},
		{"bad base64", `{"actions":[{"type":"send_file","name":"a","mimetype":"text/plain","data_base64":"!!"}]}`,
			`actions[0] (send_file): "data_base64" is not standard base64`, 200},
		{"bad mimetype", `{"actions":[{"type":"send_file","name":"a","mimetype":"text","data_base64":""}]}`,
			`actions[0] (send_file): "mimetype" must be a MIME type like "text/plain", got "text"`, 200},
		{"missing value", `{"actions":[{"type":"set_memory","key":"k"}]}`, `actions[0] (set_memory): missing "value"`, 200},
		{"long key", `{"actions":[{"type":"delete_memory","key":"` + strings.Repeat("k", 256) + `"}]}`,
			`actions[0] (delete_memory): "key" must be 1 to 255 bytes, got 256`, 200},
		{"huge value", `{"actions":[{"type":"set_memory","key":"k","value":"` + strings.Repeat("v", 70<<10) + `"}]}`,
			`actions[0] (set_memory): "value" is 71682 bytes, more than the 65536 a memory value may hold`, 200},
		{"too large", `{"actions":[],"pad":"` + strings.Repeat("x", 1<<20) + `"}`, `the body is larger than 1048576 bytes`, 200},
		{"status 201", `{"actions":[]}`, `status 201 Created (expected 200 with {"actions":[...]} or 204)`, 201},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ss := newSkillServer(t, func(int, Request) (int, string) { return c.status, c.body })
			r := newRig(t, baseConfig(ss.srv.URL), func(s *Skill) { s.c.Retries = 3 })
			sent, errText := r.say("!weather")
			want := "external skill weather answered nonsense: " + c.want
			if !strings.HasPrefix(errText, want) {
				t.Errorf("error %q\nwant %q", errText, want)
			}
			// Nothing of a bad answer is performed, apart from the engine's apology.
			if len(sent) != 1 || sent[0].Body() != "Sorry, the weather skill failed while handling that. The error has been logged." {
				t.Errorf("sent %v", bodies(sent))
			}
			if ss.count() != 1 {
				t.Errorf("nonsense was retried: %d requests", ss.count())
			}
		})
	}
}

func TestTimeout(t *testing.T) {
	release := make(chan struct{})
	ss := newSkillServer(t, func(int, Request) (int, string) {
		<-release
		return 200, `{"actions":[]}`
	})
	defer close(release) // before the server's Close, which waits for handlers
	r := newRig(t, baseConfig(ss.srv.URL), func(s *Skill) { s.c.Timeout = skills.Duration(50 * time.Millisecond) })
	start := time.Now()
	_, errText := r.say("!weather")
	if want := "external skill weather: no answer from " + ss.srv.URL + ": timed out after 50ms"; errText != want {
		t.Errorf("error %q", errText)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("took %v", took)
	}
}

func TestRetryThenSuccess(t *testing.T) {
	ss := newSkillServer(t, func(n int, _ Request) (int, string) {
		switch n {
		case 1:
			return 503, "busy"
		case 2:
			return 429, "slow down"
		}
		return 200, `{"actions":[{"type":"reply","text":"third time lucky"}]}`
	})
	var pauses []time.Duration
	r := newRig(t, baseConfig(ss.srv.URL), func(s *Skill) {
		s.c.Retries = 3
		s.backoff = 200 * time.Millisecond
		s.sleep = func(ctx context.Context, d time.Duration) error { pauses = append(pauses, d); return nil }
	})
	sent, errText := r.say("!weather")
	if errText != "" || strings.Join(bodies(sent), "|") != "third time lucky" {
		t.Fatalf("sent %v, error %q", bodies(sent), errText)
	}
	if ss.count() != 3 || fmt.Sprint(pauses) != "[200ms 400ms]" {
		t.Errorf("%d requests, pauses %v", ss.count(), pauses)
	}
	// Every attempt sends the same signed body.
	if !bytes.Equal(ss.bodies[0], ss.bodies[2]) || ss.headers[0].Get("X-Opsbot-Signature") != ss.headers[2].Get("X-Opsbot-Signature") {
		t.Error("retries changed the body")
	}

	// Retries run out: the error says how many attempts were made.
	ss2 := newSkillServer(t, func(int, Request) (int, string) { return 502, "" })
	r2 := newRig(t, baseConfig(ss2.srv.URL), func(s *Skill) { s.c.Retries = 2 })
	_, errText = r2.say("!weather")
	if want := "external skill weather: " + ss2.srv.URL + " answered 502 Bad Gateway after 3 attempts"; errText != want {
		t.Errorf("error %q\nwant %q", errText, want)
	}
	// Network errors are retried too.
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	r3 := newRig(t, baseConfig(closed.URL), func(s *Skill) { s.c.Retries = 1 })
	_, errText = r3.say("!weather")
	if !strings.HasPrefix(errText, "external skill weather: no answer from "+closed.URL+" after 2 attempts: dial tcp") ||
		!strings.Contains(errText, "connection refused") {
		t.Errorf("error %q", errText)
	}
}

// A skill that answers 429 or 503 with Retry-After gets the pause it asked
// for (up to MaxRetryAfter) instead of the backoff; the backoff goes on
// where it was.
func TestRetryAfterIsHonoured(t *testing.T) {
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		k := n
		mu.Unlock()
		switch k {
		case 1:
			w.Header().Set("Retry-After", "3")
			w.WriteHeader(503)
		case 2:
			w.WriteHeader(502) // Retry-After is only read on 429 and 503
		case 3:
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(429)
		case 4:
			w.Header().Set("Retry-After", "soon") // not a number: the backoff
			w.WriteHeader(429)
		default:
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"actions":[{"type":"reply","text":"rested"}]}`)
		}
	}))
	defer srv.Close()
	var pauses []time.Duration
	r := newRig(t, baseConfig(srv.URL), func(s *Skill) {
		s.c.Retries = 5
		s.backoff = 200 * time.Millisecond
		s.sleep = func(ctx context.Context, d time.Duration) error { pauses = append(pauses, d); return nil }
	})
	sent, errText := r.say("!weather")
	if errText != "" || strings.Join(bodies(sent), "|") != "rested" {
		t.Fatalf("sent %v, error %q", bodies(sent), errText)
	}
	if want := fmt.Sprint([]time.Duration{3 * time.Second, 200 * time.Millisecond, MaxRetryAfter, 400 * time.Millisecond}); fmt.Sprint(pauses) != want {
		t.Errorf("pauses %v, want %s", pauses, want)
	}
}

func TestClientErrorsAreNotRetried(t *testing.T) {
	for _, status := range []int{400, 401, 404} {
		ss := newSkillServer(t, func(int, Request) (int, string) { return status, "no" })
		r := newRig(t, baseConfig(ss.srv.URL), func(s *Skill) { s.c.Retries = 5 })
		_, errText := r.say("!weather")
		want := fmt.Sprintf("external skill weather: %s answered %s (not retried: the skill refused the request; check its url and secret)", ss.srv.URL, statusText(status))
		if errText != want {
			t.Errorf("error %q\nwant %q", errText, want)
		}
		if ss.count() != 1 {
			t.Errorf("%d: %d requests", status, ss.count())
		}
	}
	// A wrong secret is refused by the skill (which checks the signature).
	ss := newSkillServer(t, answerWith(`{"actions":[]}`))
	r := newRig(t, baseConfig(ss.srv.URL), func(s *Skill) { s.c.Secret = "not-the-right-secret" })
	if _, errText := r.say("!weather"); !strings.Contains(errText, "answered 401 Unauthorized (not retried") {
		t.Errorf("wrong secret: %q", errText)
	}
	// Redirects are not followed.
	redirect := httptest.NewServer(http.RedirectHandler(ss.srv.URL, http.StatusTemporaryRedirect))
	defer redirect.Close()
	r = newRig(t, baseConfig(redirect.URL), nil)
	if _, errText := r.say("!weather"); !strings.Contains(errText, "answered 307 Temporary Redirect (redirects are not followed") {
		t.Errorf("redirect: %q", errText)
	}
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestCircuitBreaker(t *testing.T) {
	var mu sync.Mutex
	status := 500
	ss := newSkillServer(t, func(int, Request) (int, string) {
		mu.Lock()
		defer mu.Unlock()
		if status != 200 {
			return status, ""
		}
		return 200, `{"actions":[{"type":"reply","text":"back"}]}`
	})
	setStatus := func(s int) { mu.Lock(); status = s; mu.Unlock() }
	clock := &fakeClock{now: time.Unix(1700000000, 0)}
	r := newRig(t, baseConfig(ss.srv.URL), func(s *Skill) { s.now = clock.Now; s.c.Retries = 1 })

	for i := 1; i <= 5; i++ {
		if _, errText := r.say("!weather"); !strings.Contains(errText, "answered 500 Internal Server Error after 2 attempts") {
			t.Fatalf("call %d: %q", i, errText)
		}
	}
	if ss.count() != 10 {
		t.Fatalf("%d requests, want 10", ss.count())
	}
	if !strings.Contains(r.log.String(), `"level":"warn","skill":"weather"`) || !strings.Contains(r.log.String(), "circuit open") {
		t.Errorf("no warning when the circuit opened:\n%s", r.log.String())
	}
	// Open: calls fail at once, without a request.
	clock.Add(12 * time.Second)
	_, errText := r.say("!weather")
	if want := "external skill weather is unavailable (circuit open after 5 failures; retrying in 18s)"; errText != want {
		t.Errorf("open: %q\nwant %q", errText, want)
	}
	if ss.count() != 10 {
		t.Errorf("a call went through the open circuit")
	}
	// Half-open: one trial; it fails, and the circuit opens again at once.
	clock.Add(19 * time.Second)
	if _, errText := r.say("!weather"); !strings.Contains(errText, "answered 500") || ss.count() != 12 {
		t.Errorf("trial: %q, %d requests", errText, ss.count())
	}
	if _, errText := r.say("!weather"); !strings.Contains(errText, "retrying in 30s") || ss.count() != 12 {
		t.Errorf("after a failed trial: %q, %d requests", errText, ss.count())
	}
	// The skill recovers: the next trial closes the circuit.
	setStatus(200)
	clock.Add(30 * time.Second)
	if sent, errText := r.say("!weather"); errText != "" || strings.Join(bodies(sent), "|") != "back" {
		t.Errorf("recovery: %v %q", bodies(sent), errText)
	}
	if !strings.Contains(r.log.String(), "circuit closed") {
		t.Errorf("no log line when the circuit closed")
	}
	// Closed again: a single failure does not open it.
	setStatus(503)
	r.say("!weather")
	setStatus(200)
	if sent, errText := r.say("!weather"); errText != "" || len(sent) != 1 {
		t.Errorf("after one failure: %v %q", bodies(sent), errText)
	}
	// 4xx and nonsense answers prove the skill is reachable: they do not count.
	setStatus(400)
	for range 6 {
		r.say("!weather")
	}
	if _, errText := r.say("!weather"); !strings.Contains(errText, "answered 400") {
		t.Errorf("4xx opened the circuit: %q", errText)
	}
}

func TestBreakerTrialIsAlone(t *testing.T) {
	b := &breaker{threshold: 2, openFor: time.Second}
	now := time.Unix(0, 0)
	for range 2 {
		if st, _ := b.allow(now); st != stateClosed {
			t.Fatal("not closed")
		}
		b.record(now, callFailed, false)
	}
	if st, wait := b.allow(now.Add(100 * time.Millisecond)); st != stateOpen || wait != 900*time.Millisecond {
		t.Fatalf("state %d wait %v", st, wait)
	}
	later := now.Add(2 * time.Second)
	if st, _ := b.allow(later); st != stateTrial {
		t.Fatal("no trial")
	}
	if st, _ := b.allow(later); st != stateBusy {
		t.Fatal("a second call went through during the trial")
	}
	// A cancelled trial lets the next call try.
	b.record(later, callCancelled, true)
	if st, _ := b.allow(later); st != stateTrial {
		t.Fatal("no new trial after a cancelled one")
	}
	if opened, closed := b.record(later, callOK, true); opened || !closed {
		t.Fatal("a good trial did not close the circuit")
	}
	if st, _ := b.allow(later); st != stateClosed {
		t.Fatal("not closed after a good trial")
	}
}

func TestEventsAndHelp(t *testing.T) {
	ss := newSkillServer(t, answerWith(`{"actions":[{"type":"respond","text":"seen"}]}`))
	c := baseConfig(ss.srv.URL)
	c.Events = append(c.Events, "com.example.custom")
	r := newRig(t, c, nil)
	reaction := &event.Event{Type: event.EventReaction, ID: "$r", RoomID: room, Sender: alice,
		Content: event.Content{VeryRaw: json.RawMessage(`{"m.relates_to":{"rel_type":"m.annotation","event_id":"$x","key":"🎉"}}`)}}
	_ = reaction.Content.ParseRaw(reaction.Type)
	if sent, errText := r.handle(reaction); errText != "" || len(sent) != 1 {
		t.Fatalf("reaction: %v %q", bodies(sent), errText)
	}
	req := ss.last()
	if req.Match.Kind != "event" || req.Match.Pattern != "m.reaction" || req.Event.Type != "m.reaction" ||
		string(req.Event.RelatesTo) != `{"rel_type":"m.annotation","event_id":"$x","key":"🎉"}` {
		t.Errorf("reaction request: %+v", req)
	}
	sk := "@bob:example.org"
	member := &event.Event{Type: event.StateMember, StateKey: &sk, ID: "$m", RoomID: room, Sender: "@bob:example.org",
		Content: event.Content{VeryRaw: json.RawMessage(`{"membership":"join"}`)}}
	_ = member.Content.ParseRaw(member.Type)
	if sent, _ := r.handle(member); len(sent) != 1 || ss.last().Event.StateKey == nil || *ss.last().Event.StateKey != sk {
		t.Errorf("member: %v %+v", bodies(sent), ss.last().Event)
	}
	// A custom type comes as a message or as a state event.
	for _, evt := range []*event.Event{
		{Type: event.Type{Type: "com.example.custom", Class: event.MessageEventType}, ID: "$c1", RoomID: room, Sender: alice},
		{Type: event.Type{Type: "com.example.custom", Class: event.StateEventType}, StateKey: &sk, ID: "$c2", RoomID: room, Sender: alice},
	} {
		if sent, errText := r.handle(evt); len(sent) != 1 || errText != "" || ss.last().Event.EventID != string(evt.ID) || string(ss.last().Event.Content) != "{}" {
			t.Errorf("%s: %v %q %s", evt.Type.Repr(), bodies(sent), errText, ss.last().Event.Content)
		}
	}
	// Commands show in !help with their help text.
	help := r.engine.CommandsFor(bot)
	if len(help) != 2 || help[0].Usage != "!weather [city...]" || help[0].Help != "the weather" || help[1].Usage != "!forecast <days> <city...>" {
		t.Errorf("help: %+v", help)
	}
	// Wrong arguments get the usage line, without a request.
	before := ss.count()
	if sent, _ := r.say("!forecast"); strings.Join(bodies(sent), "") != "Usage: !forecast <days> <city...>" || ss.count() != before {
		t.Errorf("usage: %v", bodies(sent))
	}
}

func TestSetupErrors(t *testing.T) {
	cases := []struct {
		name    string
		change  func(c *Config)
		section string
		want    string
	}{
		{"bad pattern", func(c *Config) { c.Commands[1].Pattern = "forecast {days" },
			"", `external_skills[0].commands[1].pattern: command pattern "forecast {days": malformed placeholder "{days"`},
		{"pattern starts with placeholder", func(c *Config) { c.Commands[0].Pattern = "{city}" },
			"", `external_skills[0].commands[0].pattern: command pattern "{city}" must start with the command word`},
		{"same pattern twice", func(c *Config) { c.Commands[1].Pattern = "Weather  {city...?}" },
			"", `external_skills[0].commands[1].pattern: "Weather  {city...?}" is also commands[0]`},
		{"bad regex", func(c *Config) { c.Regexes[1] = "(unclosed" },
			"", "external_skills[0].regexes[1]: invalid regex \"(unclosed\": error parsing regexp: missing closing ): `(unclosed`"},
		{"bad event type", func(c *Config) { c.Events[0] = "m.room message" },
			"", `external_skills[0].events[0]: "m.room message" is not an event type`},
		{"account data", func(c *Config) { c.Events[1] = "m.direct" },
			"", `external_skills[0].events[1]: "m.direct" is account data: skills only see room events`},
		{"nothing matched", func(c *Config) { c.Commands, c.Regexes, c.Events = nil, nil, nil },
			"", `external_skills[0]: matches nothing`},
		{"no secret", func(c *Config) { c.Secret = "" },
			"", `external_skills[0].secret: missing (set it in the file or in OPSBOT_SKILL_WEATHER_SECRET)`},
		{"bad url", func(c *Config) { c.URL = "ftp://x" },
			"", `external_skills[0].url: "ftp://x" is not an http(s) URL`},
		{"settings section", nil, "units: metric\n", `skills.weather.units: unknown key`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := baseConfig("http://127.0.0.1:9/")
			if c.change != nil {
				c.change(&cfg)
			}
			var section *string
			if c.section != "" {
				section = &c.section
			}
			_, err := setupRig(t, cfg, nil, section)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v\nwant %q", err, c.want)
			}
		})
	}
	// An empty section is fine.
	empty := "{}"
	if _, err := setupRig(t, baseConfig("http://127.0.0.1:9/"), nil, &empty); err != nil {
		t.Errorf("empty section: %v", err)
	}
	// A name given twice.
	list := FromConfig([]Config{baseConfig("http://a:1/"), baseConfig("http://b:1/")}, zerolog.Nop())
	_, err := skilltest.Setup(list[1:], nil)
	if err == nil || !strings.Contains(err.Error(), `external_skills[1].name: "weather" is already the name of external_skills[0]`) {
		t.Errorf("duplicate name: %v", err)
	}
	// New (without an index) names the entry by its name.
	bad := baseConfig("http://a:1/")
	bad.Regexes = []string{"("}
	if _, err := skilltest.Setup([]skills.Skill{New(bad, zerolog.Nop())}, nil); err == nil || !strings.Contains(err.Error(), "external_skills[weather].regexes[0]") {
		t.Errorf("New: %v", err)
	}
}

// The secret never reaches the log, whatever happens; message bodies only
// at debug.
func TestLogKeepsSecrets(t *testing.T) {
	ss := newSkillServer(t, func(n int, _ Request) (int, string) {
		if n%2 == 0 {
			return 500, ""
		}
		return 200, `{"actions":[{"type":"replay"}]}`
	})
	r := newRig(t, baseConfig(ss.srv.URL+"/?key=url-credential"), nil)
	for range 12 {
		r.say("!weather top-secret-city")
	}
	log := r.log.String()
	for _, secretish := range []string{secret, "url-credential", "top-secret-city"} {
		if strings.Contains(log, secretish) {
			t.Errorf("log contains %q:\n%s", secretish, log)
		}
	}
}

// testdata/signature.json is a worked example for skill authors: a body,
// a secret and the signature opsbot sends with them.
func TestSignatureVector(t *testing.T) {
	data, err := os.ReadFile("testdata/signature.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Secret, Body, Signature string
	}
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	if got := Sign(v.Secret, []byte(v.Body)); got != v.Signature {
		t.Errorf("Sign = %s, testdata says %s", got, v.Signature)
	}
	if !Verify(v.Secret, []byte(v.Body), v.Signature) || Verify(v.Secret, []byte(v.Body+" "), v.Signature) {
		t.Error("Verify")
	}
	var req Request
	if err := json.Unmarshal([]byte(v.Body), &req); err != nil || req.Version != 1 {
		t.Errorf("the example body is not a version 1 request: %v", err)
	}
}
