// Package peers drives independent Matrix clients, the kind people really
// use, as the people in test rooms: matrix-nio with libolm (Python) and
// matrix-js-sdk with its Rust crypto (Node). Each runs as a child process
// that reads one JSON command per line on stdin and answers one JSON line on
// stdout; this file is the Go side of that protocol, shared by both.
//
// Commands (every field except cmd is command-specific):
//
//	{"cmd":"login","homeserver":URL,"user_id":ID,"password":PW,"device_id":DEV} -> {"user_id","device_id"}
//	{"cmd":"create_room","encrypted":true,"invite":[IDs],"name":N}             -> {"room_id"}
//	{"cmd":"join","room_id":R}                                                 -> {}
//	{"cmd":"invite","room_id":R,"user_id":ID}                                  -> {}
//	{"cmd":"leave","room_id":R}                                                -> {}
//	{"cmd":"send","room_id":R,"body":B}                                        -> {"event_id"}
//	{"cmd":"send","room_id":R,"body":B,"reply_to":E}  (js peer only)            -> {"event_id"}
//	{"cmd":"wait_message","room_id":R,"sender":ID,"timeout_ms":N}              -> {"event_id","body","msgtype","encrypted","sender"}
//	{"cmd":"send_file","room_id":R,"path":P,"mimetype":M}                      -> {"event_id"}
//	{"cmd":"wait_file","room_id":R,"sender":ID,"timeout_ms":N,"save_to":P}     -> {"event_id","name","sha256","encrypted"}
//	{"cmd":"is_encrypted","room_id":R}                                         -> {"encrypted"}
//	{"cmd":"logout"}                                                           -> {}
//
// Cross-signing and interactive verification (js peer only; see verify.go):
//
//	{"cmd":"bootstrap_cross_signing","password":PW}                            -> {"master_key"}
//	{"cmd":"device_trust","user_id":U,"device_id":D}                           -> {"known","signed_by_owner","cross_signing_verified","locally_verified","verified"}
//	{"cmd":"user_trust","user_id":U}                                           -> {"has_master_key","cross_signing_verified","verified"}
//	{"cmd":"verify_request","user_id":U,"device_id":D}                         -> {"transaction_id"} (to-device)
//	{"cmd":"verify_request","user_id":U,"room_id":R}                           -> {"transaction_id"} (in-room)
//	{"cmd":"verify_accept","timeout_ms":N}                                     -> {"transaction_id","from","from_device"}
//	{"cmd":"verify_sas","start":bool,"timeout_ms":N}                           -> {"emojis":[[symbol,name]...],"decimals":[a,b,c]}
//	{"cmd":"verify_confirm"}                                                   -> {}
//	{"cmd":"verify_mismatch"}                                                  -> {}
//	{"cmd":"verify_cancel"}                                                    -> {}
//	{"cmd":"verify_wait_done","timeout_ms":N}                                  -> {"phase":"done"} or {"phase":"cancelled","code","reason","by"}
//
// A failed command answers {"error":"..."}. wait_message returns the next
// message from sender in the room that the peer has not returned before, in
// timeline order, decrypting it (retrying while its room key is late);
// "encrypted" says whether it arrived encrypted.
package peers

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opsbot/opsbot/integration/harness"
)

// Peer is one logged-in device of a person, driven over the protocol.
type Peer struct {
	Name     string // "nio" or "js"
	UserID   string
	DeviceID string

	t      testing.TB
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	mu     sync.Mutex
	stderr *harness.LockedBuffer
	done   chan struct{}
}

// Message is what wait_message returns.
type Message struct {
	EventID   string `json:"event_id"`
	Body      string `json:"body"`
	MsgType   string `json:"msgtype"`
	Encrypted bool   `json:"encrypted"`
	Sender    string `json:"sender"`
	// FormattedBody is the HTML the client was given, if any.
	FormattedBody string `json:"formatted_body"`
	// Mentions is the message's m.mentions, nil when it has none.
	Mentions *Mentions `json:"mentions"`
}

// Mentions is what a message says it pings (m.mentions).
type Mentions struct {
	UserIDs []string `json:"user_ids"`
	Room    bool     `json:"room"`
}

// File is what wait_file returns.
type File struct {
	EventID   string `json:"event_id"`
	Name      string `json:"name"`
	SHA256    string `json:"sha256"`
	Encrypted bool   `json:"encrypted"`
}

// start runs a peer process; the login happens in Login.
func start(t testing.TB, name string, cmd *exec.Cmd) *Peer {
	t.Helper()
	p := &Peer{Name: name, t: t, cmd: cmd, lines: make(chan string, 16), stderr: &harness.LockedBuffer{}, done: make(chan struct{})}
	var err error
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the %s peer: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		if p.UserID != "" {
			_, _ = p.call(map[string]any{"cmd": "logout"}, 20*time.Second)
		}
		_ = p.stdin.Close()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s peer (%s) stderr, last lines:\n%s", p.Name, p.UserID, tail(p.stderr.String(), 40))
		}
	})
	return p
}

// call sends one command and waits for its answer.
func (p *Peer) call(req map[string]any, timeout time.Duration) (json.RawMessage, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	data, _ := json.Marshal(req)
	if _, err := p.stdin.Write(append(data, '\n')); err != nil {
		return nil, fmt.Errorf("%s peer: writing %s: %w", p.Name, req["cmd"], err)
	}
	select {
	case line, ok := <-p.lines:
		if !ok {
			return nil, fmt.Errorf("%s peer exited during %s", p.Name, req["cmd"])
		}
		var resp struct {
			Error string `json:"error"`
		}
		if err := json.Unmarshal([]byte(line), &resp); err != nil {
			return nil, fmt.Errorf("%s peer answered %s with a non-JSON line %q", p.Name, req["cmd"], line)
		}
		if resp.Error != "" {
			return nil, fmt.Errorf("%s peer: %s: %s", p.Name, req["cmd"], resp.Error)
		}
		return json.RawMessage(line), nil
	case <-time.After(timeout):
		return nil, fmt.Errorf("%s peer: no answer to %s within %v", p.Name, req["cmd"], timeout)
	}
}

// Do runs a command and decodes its answer into out (which may be nil),
// failing the test on error.
func (p *Peer) Do(req map[string]any, out any) {
	p.t.Helper()
	timeout := 60 * time.Second
	if ms, ok := req["timeout_ms"].(int); ok {
		timeout = time.Duration(ms)*time.Millisecond + 30*time.Second
	}
	raw, err := p.call(req, timeout)
	if err != nil {
		p.t.Fatal(err)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			p.t.Fatalf("%s peer: decoding answer to %s: %v", p.Name, req["cmd"], err)
		}
	}
}

// Login logs the peer in as an existing user with a new device.
func (p *Peer) Login(homeserver, userID, password, deviceID string) {
	p.t.Helper()
	var out struct {
		UserID   string `json:"user_id"`
		DeviceID string `json:"device_id"`
	}
	p.Do(map[string]any{"cmd": "login", "homeserver": homeserver, "user_id": userID, "password": password, "device_id": deviceID}, &out)
	p.UserID, p.DeviceID = out.UserID, out.DeviceID
}

// CreateRoom creates a room, encrypted or not, inviting users.
func (p *Peer) CreateRoom(encrypted bool, invite ...string) string {
	p.t.Helper()
	var out struct {
		RoomID string `json:"room_id"`
	}
	p.Do(map[string]any{"cmd": "create_room", "encrypted": encrypted, "invite": invite, "name": "test room"}, &out)
	return out.RoomID
}

// Join joins a room.
func (p *Peer) Join(room string) {
	p.t.Helper()
	p.Do(map[string]any{"cmd": "join", "room_id": room}, nil)
}

// Invite invites a user.
func (p *Peer) Invite(room, user string) {
	p.t.Helper()
	p.Do(map[string]any{"cmd": "invite", "room_id": room, "user_id": user}, nil)
}

// Leave leaves a room.
func (p *Peer) Leave(room string) {
	p.t.Helper()
	p.Do(map[string]any{"cmd": "leave", "room_id": room}, nil)
}

// Send sends a text message (encrypted when the room is) and returns its event ID.
func (p *Peer) Send(room, body string) string {
	p.t.Helper()
	var out struct {
		EventID string `json:"event_id"`
	}
	p.Do(map[string]any{"cmd": "send", "room_id": room, "body": body}, &out)
	return out.EventID
}

// TrySend is Send returning the error instead of failing the test, for
// goroutines other than the test's.
func (p *Peer) TrySend(room, body string) (string, error) {
	raw, err := p.call(map[string]any{"cmd": "send", "room_id": room, "body": body}, 60*time.Second)
	if err != nil {
		return "", err
	}
	var out struct {
		EventID string `json:"event_id"`
	}
	err = json.Unmarshal(raw, &out)
	return out.EventID, err
}

// SendReply sends a text message as a reply to an earlier event (js peer).
func (p *Peer) SendReply(room, body, replyTo string) string {
	p.t.Helper()
	var out struct {
		EventID string `json:"event_id"`
	}
	p.Do(map[string]any{"cmd": "send", "room_id": room, "body": body, "reply_to": replyTo}, &out)
	return out.EventID
}

// WaitMessage returns the next message from sender in room.
func (p *Peer) WaitMessage(room, sender string, timeout time.Duration) Message {
	p.t.Helper()
	var m Message
	p.Do(map[string]any{"cmd": "wait_message", "room_id": room, "sender": sender, "timeout_ms": int(timeout.Milliseconds())}, &m)
	return m
}

// TryWaitMessage is WaitMessage returning the error instead of failing the
// test, for messages the peer must not be able to read.
func (p *Peer) TryWaitMessage(room, sender string, timeout time.Duration) (Message, error) {
	var m Message
	raw, err := p.call(map[string]any{"cmd": "wait_message", "room_id": room, "sender": sender, "timeout_ms": int(timeout.Milliseconds())}, timeout+30*time.Second)
	if err == nil {
		err = json.Unmarshal(raw, &m)
	}
	return m, err
}

// SendFile uploads a file (encrypted in an encrypted room) and sends it.
func (p *Peer) SendFile(room, path, mimetype string) string {
	p.t.Helper()
	var out struct {
		EventID string `json:"event_id"`
	}
	p.Do(map[string]any{"cmd": "send_file", "room_id": room, "path": path, "mimetype": mimetype}, &out)
	return out.EventID
}

// WaitFile waits for a file from sender, downloads (and decrypts) it to saveTo.
func (p *Peer) WaitFile(room, sender, saveTo string, timeout time.Duration) File {
	p.t.Helper()
	var f File
	p.Do(map[string]any{"cmd": "wait_file", "room_id": room, "sender": sender, "timeout_ms": int(timeout.Milliseconds()), "save_to": saveTo}, &f)
	return f
}

// IsEncrypted reports whether the peer sees the room as encrypted.
func (p *Peer) IsEncrypted(room string) bool {
	p.t.Helper()
	var out struct {
		Encrypted bool `json:"encrypted"`
	}
	p.Do(map[string]any{"cmd": "is_encrypted", "room_id": room}, &out)
	return out.Encrypted
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
