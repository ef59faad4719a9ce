package store_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"maunium.net/go/mautrix"
	mas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/sqlstatestore"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/store"
)

// The cached store must still be what mautrix and opsbot's encryption ask for.
var (
	_ mas.StateStore     = (*store.CachedStateStore)(nil)
	_ crypto.StateStore  = (*store.CachedStateStore)(nil)
	_ mautrix.StateStore = (*store.CachedStateStore)(nil)
)

const (
	room = id.RoomID("!room:example.org")
	bot  = id.UserID("@bot:example.org")
	user = id.UserID("@alice:example.org")
)

// openStates returns the cached store and, on the same tables, a plain SQL
// store that writes behind the cache's back.
func openStates(t *testing.T, cfg config.Database) (*store.CachedStateStore, *sqlstatestore.SQLStateStore) {
	t.Helper()
	st := open(t, cfg)
	t.Cleanup(func() { st.Close() })
	cs := store.NewCachedStateStore(st.DB)
	if err := cs.Upgrade(context.Background()); err != nil {
		t.Fatal(err)
	}
	return cs, sqlstatestore.NewSQLStateStore(st.DB, nil, false)
}

func membership(t *testing.T, cs *store.CachedStateStore, u id.UserID) event.Membership {
	t.Helper()
	m, err := cs.GetMembership(context.Background(), room, u)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestStateCacheAnswersFromMemoryAndForgetsOnWrite(t *testing.T) {
	forEachDialect(t, func(t *testing.T, cfg config.Database) {
		ctx := context.Background()
		cs, behind := openStates(t, cfg)

		// Unknown: leave, not in room, no member.
		if cs.IsInRoom(ctx, room, bot) || membership(t, cs, bot) != event.MembershipLeave {
			t.Fatal("unknown user is in the room")
		}
		if m, err := cs.TryGetMember(ctx, room, bot); m != nil || err != nil {
			t.Fatalf("TryGetMember of unknown: %v %v", m, err)
		}
		// A write through the cache is seen at once.
		if err := cs.SetMembership(ctx, room, bot, event.MembershipJoin); err != nil {
			t.Fatal(err)
		}
		if !cs.IsInRoom(ctx, room, bot) || !cs.IsInvited(ctx, room, bot) {
			t.Fatal("join not seen")
		}
		// The answer comes from memory now: a write behind the cache's back
		// is not seen (which is why every writer must go through it).
		if err := behind.SetMembership(ctx, room, bot, event.MembershipLeave); err != nil {
			t.Fatal(err)
		}
		if !cs.IsInRoom(ctx, room, bot) {
			t.Fatal("answer did not come from the cache")
		}
		// Each write path drops the entry.
		if err := cs.SetMember(ctx, room, bot, &event.MemberEventContent{Membership: event.MembershipInvite, Displayname: "Bot"}); err != nil {
			t.Fatal(err)
		}
		if m, _ := cs.GetMember(ctx, room, bot); m.Membership != event.MembershipInvite || m.Displayname != "Bot" {
			t.Fatalf("SetMember not seen: %+v", m)
		}
		if cs.IsInRoom(ctx, room, bot) || !cs.IsInvited(ctx, room, bot) || !cs.IsMembership(ctx, room, bot, event.MembershipInvite) {
			t.Fatal("invite answers wrong")
		}
		// A caller changing the returned content does not change the cache.
		m, _ := cs.GetMember(ctx, room, bot)
		m.Membership = event.MembershipBan
		if membership(t, cs, bot) != event.MembershipInvite {
			t.Fatal("cached entry shared with a caller")
		}

		_ = behind.SetMembership(ctx, room, user, event.MembershipJoin)
		_ = membership(t, cs, user) // cached: join
		join := func(u id.UserID) *event.Event {
			return &event.Event{StateKey: new(u.String()), Type: event.StateMember, RoomID: room,
				Content: event.Content{Parsed: &event.MemberEventContent{Membership: event.MembershipJoin}}}
		}
		if err := cs.ReplaceCachedMembers(ctx, room, []*event.Event{join(bot)}); err != nil {
			t.Fatal(err)
		}
		if membership(t, cs, bot) != event.MembershipJoin || membership(t, cs, user) != event.MembershipLeave {
			t.Fatalf("ReplaceCachedMembers not seen: bot %s, alice %s", membership(t, cs, bot), membership(t, cs, user))
		}
		if err := cs.ClearCachedMembers(ctx, room); err != nil {
			t.Fatal(err)
		}
		if cs.IsInRoom(ctx, room, bot) {
			t.Fatal("ClearCachedMembers not seen")
		}

		// Encryption.
		if enc, err := cs.IsEncrypted(ctx, room); enc || err != nil {
			t.Fatal(enc, err)
		}
		if err := behind.SetEncryptionEvent(ctx, room, &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}); err != nil {
			t.Fatal(err)
		}
		if enc, _ := cs.IsEncrypted(ctx, room); enc {
			t.Fatal("encryption answer did not come from the cache")
		}
		if err := cs.SetEncryptionEvent(ctx, room, &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1, RotationPeriodMessages: 10}); err != nil {
			t.Fatal(err)
		}
		if enc, _ := cs.IsEncrypted(ctx, room); !enc {
			t.Fatal("SetEncryptionEvent not seen")
		}
		if e, _ := cs.GetEncryptionEvent(ctx, room); e == nil || e.RotationPeriodMessages != 10 {
			t.Fatalf("encryption content: %+v", e)
		}

		// Upgrade (a process becoming the leader) starts from the database.
		_ = behind.SetMembership(ctx, room, bot, event.MembershipBan)
		if err := cs.Upgrade(ctx); err != nil {
			t.Fatal(err)
		}
		if membership(t, cs, bot) != event.MembershipBan {
			t.Fatal("Upgrade did not empty the cache")
		}
	})
}

// Every way mautrix writes membership and encryption reaches the cache: the
// state updates the pipeline makes with UpdateStateStore, and the intents'
// and clients' own bookkeeping after join, leave, invite, kick, sending state
// and fetching members or state. The cache is primed before each, so a path
// that wrote behind its back would leave the old answer.
func TestStateCacheSeesMautrixWrites(t *testing.T) {
	ctx := context.Background()
	cs, _ := openStates(t, config.Database{Type: "sqlite", URI: t.TempDir() + "/opsbot.db"})
	var stateResp, membersResp, joinedResp string
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		p := r.URL.Path
		switch {
		case strings.HasPrefix(p, "/_matrix/client/v3/join/"), strings.HasSuffix(p, "/join"):
			_, _ = w.Write([]byte(`{"room_id":"` + string(room) + `"}`))
		case strings.HasSuffix(p, "/leave"), strings.HasSuffix(p, "/invite"), strings.HasSuffix(p, "/kick"), strings.HasSuffix(p, "/ban"), strings.HasSuffix(p, "/unban"):
			_, _ = w.Write([]byte(`{}`))
		case r.Method == http.MethodPut && strings.Contains(p, "/state/"):
			_, _ = w.Write([]byte(`{"event_id":"$sent"}`))
		case strings.HasSuffix(p, "/state"):
			_, _ = w.Write([]byte(stateResp))
		case strings.HasSuffix(p, "/members"):
			_, _ = w.Write([]byte(membersResp))
		case strings.HasSuffix(p, "/joined_members"):
			_, _ = w.Write([]byte(joinedResp))
		default:
			t.Errorf("unexpected request %s %s", r.Method, p)
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errcode":"M_NOT_FOUND"}`))
		}
	}))
	defer hs.Close()
	as, err := mas.CreateFull(mas.CreateOpts{
		Registration:     &mas.Registration{ID: "opsbot", AppToken: "as", ServerToken: "hs", SenderLocalpart: "bot"},
		HomeserverDomain: "example.org",
		HomeserverURL:    hs.URL,
		StateStore:       cs,
	})
	if err != nil {
		t.Fatal(err)
	}
	as.DefaultHTTPRetries = 0
	_ = cs.MarkRegistered(ctx, bot)
	intent := as.Intent(bot)

	want := func(step string, u id.UserID, m event.Membership) {
		t.Helper()
		if got := membership(t, cs, u); got != m {
			t.Fatalf("%s: %s is %s, want %s", step, u, got, m)
		}
	}
	want("start", bot, event.MembershipLeave)
	if err := intent.EnsureJoined(ctx, room); err != nil {
		t.Fatal(err)
	}
	want("EnsureJoined", bot, event.MembershipJoin)
	if _, err := intent.LeaveRoom(ctx, room); err != nil {
		t.Fatal(err)
	}
	want("LeaveRoom", bot, event.MembershipLeave)
	if _, err := intent.JoinRoomByID(ctx, room); err != nil {
		t.Fatal(err)
	}
	want("JoinRoomByID", bot, event.MembershipJoin)
	if _, err := intent.JoinRoom(ctx, string(room), nil); err != nil {
		t.Fatal(err)
	}
	want("JoinRoom", bot, event.MembershipJoin)

	want("before invite", user, event.MembershipLeave)
	if _, err := intent.InviteUser(ctx, room, &mautrix.ReqInviteUser{UserID: user}); err != nil {
		t.Fatal(err)
	}
	want("InviteUser", user, event.MembershipInvite)
	if _, err := intent.KickUser(ctx, room, &mautrix.ReqKickUser{UserID: user}); err != nil {
		t.Fatal(err)
	}
	want("KickUser", user, event.MembershipLeave)
	if _, err := intent.BanUser(ctx, room, &mautrix.ReqBanUser{UserID: user}); err != nil {
		t.Fatal(err)
	}
	want("BanUser", user, event.MembershipBan)
	if _, err := intent.UnbanUser(ctx, room, &mautrix.ReqUnbanUser{UserID: user}); err != nil {
		t.Fatal(err)
	}
	want("UnbanUser", user, event.MembershipLeave)

	if _, err := intent.SendStateEvent(ctx, room, event.StateMember, user.String(), &event.MemberEventContent{Membership: event.MembershipInvite}); err != nil {
		t.Fatal(err)
	}
	want("SendStateEvent member", user, event.MembershipInvite)
	if enc, _ := cs.IsEncrypted(ctx, room); enc {
		t.Fatal("encrypted too early")
	}
	if _, err := intent.SendStateEvent(ctx, room, event.StateEncryption, "", &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}); err != nil {
		t.Fatal(err)
	}
	if enc, _ := cs.IsEncrypted(ctx, room); !enc {
		t.Fatal("SendStateEvent encryption not seen")
	}

	member := func(u id.UserID, m event.Membership) map[string]any {
		return map[string]any{"type": "m.room.member", "state_key": u, "sender": u, "event_id": "$" + string(m) + string(u),
			"room_id": room, "content": map[string]any{"membership": m}}
	}
	js := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	stateResp = js([]any{member(bot, event.MembershipJoin), member(user, event.MembershipJoin),
		map[string]any{"type": "m.room.encryption", "state_key": "", "sender": user, "event_id": "$enc", "room_id": room,
			"content": map[string]any{"algorithm": "m.megolm.v1.aes-sha2", "rotation_period_msgs": 7}}})
	if _, err := intent.State(ctx, room); err != nil {
		t.Fatal(err)
	}
	want("State", user, event.MembershipJoin)
	if e, _ := cs.GetEncryptionEvent(ctx, room); e == nil || e.RotationPeriodMessages != 7 {
		t.Fatalf("State: encryption %+v", e)
	}
	membersResp = js(map[string]any{"chunk": []any{member(bot, event.MembershipJoin), member(user, event.MembershipLeave)}})
	if _, err := intent.Members(ctx, room); err != nil {
		t.Fatal(err)
	}
	want("Members", user, event.MembershipLeave)
	joinedResp = js(map[string]any{"joined": map[string]any{string(bot): map[string]any{}, string(user): map[string]any{}}})
	if _, err := intent.JoinedMembers(ctx, room); err != nil {
		t.Fatal(err)
	}
	want("JoinedMembers", user, event.MembershipJoin)

	// What the pipeline does for every state event it handles.
	leave := &event.Event{StateKey: new(user.String()), Type: event.StateMember, RoomID: room,
		Content: event.Content{Parsed: &event.MemberEventContent{Membership: event.MembershipLeave}}}
	mautrix.UpdateStateStore(ctx, cs, leave)
	want("UpdateStateStore member", user, event.MembershipLeave)
	// mautrix's own transaction handler (opsbot has its own intake, but
	// the store must not care).
	body := js(map[string]any{"events": []any{member(user, event.MembershipJoin)}})
	req := httptest.NewRequest(http.MethodPut, "/_matrix/app/v1/transactions/t1", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer hs")
	rec := httptest.NewRecorder()
	as.Router.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("transaction: %d %s", rec.Code, rec.Body)
	}
	want("AppService transaction member", user, event.MembershipJoin)
	mautrix.UpdateStateStore(ctx, cs, &event.Event{StateKey: new(""), Type: event.StateEncryption, RoomID: room,
		Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: "org.example.other"}}})
	if enc, _ := cs.IsEncrypted(ctx, room); enc {
		t.Fatal("UpdateStateStore encryption not seen")
	}
}

// Readers racing writers never leave an old answer in the cache: once the
// writes stop, every reader sees the last one.
func TestStateCacheConcurrentWrites(t *testing.T) {
	ctx := context.Background()
	cs, _ := openStates(t, config.Database{Type: "sqlite", URI: t.TempDir() + "/opsbot.db"})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				cs.IsInRoom(ctx, room, bot)
				_, _ = cs.IsEncrypted(ctx, room)
			}
		}()
	}
	memberships := []event.Membership{event.MembershipJoin, event.MembershipLeave, event.MembershipInvite}
	for i := range 300 {
		if err := cs.SetMembership(ctx, room, bot, memberships[i%3]); err != nil {
			t.Fatal(err)
		}
		alg := id.AlgorithmMegolmV1
		if i%2 == 1 {
			alg = "none"
		}
		if err := cs.SetEncryptionEvent(ctx, room, &event.EncryptionEventContent{Algorithm: alg}); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if got := membership(t, cs, bot); got != memberships[299%3] {
		t.Fatalf("membership %s after the last write of %s", got, memberships[299%3])
	}
	if enc, _ := cs.IsEncrypted(ctx, room); enc {
		t.Fatal("stale encryption answer")
	}
}
