//go:build goolm

package bench_test

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"testing"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/goolm/session"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/e2ee"
	"github.com/opsbot/opsbot/appservice/pipeline"
	"github.com/opsbot/opsbot/appservice/store"
	"github.com/opsbot/opsbot/appservice/store/storetest"
	"github.com/opsbot/opsbot/integration/bench"
)

// sessionMessages is how many messages a sender encrypts with one Megolm
// session before rotating (the usual client default, and the inbound
// session's max_messages): every benchmark decrypts message indexes 0-99.
const sessionMessages = 100

const (
	senderDevice = id.DeviceID("ALICEPHONE")
	botDevice    = id.DeviceID("OPSBOTBENCHDEV")
	pickleKey    = "pickle-key-for-benchmarks-0123456789"
)

// megolmPlaintext is what the sender encrypts: the same message content as
// the plaintext benchmarks.
func megolmPlaintext(room string) []byte {
	return []byte(fmt.Sprintf(`{"room_id":"%s","type":"m.room.message","content":%s}`, room, bench.Content))
}

// sender is a person's device encrypting into the benchmark rooms, one
// outbound Megolm session per room, rotated every sessionMessages messages.
type sender struct {
	signingKey  id.Ed25519
	identityKey id.Curve25519
	rooms       map[string]*roomSession
	// onSession, if set, gets each new session's key, as a room key
	// arriving by to-device message would give it to the bot.
	onSession func(room string, out olm.OutboundGroupSession)
}

type roomSession struct {
	out  olm.OutboundGroupSession
	sent int
}

func newSender(b *testing.B) *sender {
	acc, err := olm.NewAccount()
	if err != nil {
		b.Fatal(err)
	}
	signing, identity, err := acc.IdentityKeys()
	if err != nil {
		b.Fatal(err)
	}
	return &sender{signingKey: signing, identityKey: identity, rooms: map[string]*roomSession{}}
}

func (s *sender) session(b *testing.B, room string) olm.OutboundGroupSession {
	rs := s.rooms[room]
	if rs == nil || rs.sent == sessionMessages {
		out, err := olm.NewOutboundGroupSession()
		if err != nil {
			b.Fatal(err)
		}
		rs = &roomSession{out: out}
		s.rooms[room] = rs
		if s.onSession != nil {
			s.onSession(room, out)
		}
	}
	rs.sent++
	return rs.out
}

// encryptedEvent returns the JSON of event i of transaction n, encrypted.
func (s *sender) encryptedEvent(b *testing.B, run string, n, i int) []byte {
	room := bench.RoomID(i)
	out := s.session(b, room)
	ciphertext, err := out.Encrypt(megolmPlaintext(room))
	if err != nil {
		b.Fatal(err)
	}
	return fmt.Appendf(nil, `{"content":{"algorithm":"m.megolm.v1.aes-sha2","ciphertext":"%s","device_id":"%s","sender_key":"%s","session_id":"%s"},"event_id":"%s","origin_server_ts":%d,"room_id":"%s","sender":"%s","type":"m.room.encrypted","unsigned":{"age":42,"membership":"join"}}`,
		ciphertext, senderDevice, s.identityKey, out.ID(), bench.EventID(run, n, i),
		1764150000000+int64(n)*bench.EventsPerTxn+int64(i), room, bench.Sender)
}

// newMachine is a bot's OlmMachine as appservice/e2ee sets it up: on
// opsbot's crypto store (mautrix's SQL store with e2ee's caches) in opsbot's
// database (one account row per bot), or, with db nil, on mautrix's memory
// store. With bare, on mautrix's SQL store alone (before issue 15).
func newMachine(b *testing.B, db *dbutil.Database, ss crypto.StateStore) *crypto.OlmMachine {
	return newMachineOn(b, db, ss, false)
}

func newMachineOn(b *testing.B, db *dbutil.Database, ss crypto.StateStore, bare bool) *crypto.OlmMachine {
	ctx := context.Background()
	log := logger()
	client, err := mautrix.NewClient("http://127.0.0.1:1", bench.Bot, bench.ASToken)
	if err != nil {
		b.Fatal(err)
	}
	client.DeviceID = botDevice
	var cs crypto.Store
	if db != nil {
		shared := crypto.NewSQLCryptoStore(db, dbutil.ZeroLogger(log), "", "", []byte(pickleKey))
		if err := shared.DB.Upgrade(ctx); err != nil {
			b.Fatal(err)
		}
		sqlStore := crypto.NewSQLCryptoStore(db, dbutil.ZeroLogger(log), bench.Bot, "", []byte(pickleKey))
		sqlStore.DeviceID = botDevice
		client.Store = sqlStore
		cs = sqlStore
		if !bare {
			if cs, err = e2ee.NewShared(db).NewStore(ctx, sqlStore); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		cs = crypto.NewMemoryStore(nil)
	}
	mach := crypto.NewOlmMachine(client, &log, cs, ss)
	mach.ShareKeysMinTrust = id.TrustStateCrossSignedTOFU
	mach.DisableRatchetTracking = true // as appservice/e2ee does
	if err := mach.Load(ctx); err != nil {
		b.Fatal(err)
	}
	return mach
}

// receive gives the bot the sender's device and, for every new session,
// the inbound session, as the to-device room key would.
func receive(b *testing.B, mach *crypto.OlmMachine, s *sender) {
	ctx := context.Background()
	err := mach.CryptoStore.PutDevices(ctx, bench.Sender, map[id.DeviceID]*id.Device{senderDevice: {
		UserID: bench.Sender, DeviceID: senderDevice, IdentityKey: s.identityKey, SigningKey: s.signingKey,
	}})
	if err != nil {
		b.Fatal(err)
	}
	s.onSession = func(room string, out olm.OutboundGroupSession) {
		igs, err := crypto.NewInboundGroupSession(s.identityKey, s.signingKey, id.RoomID(room), out.Key(),
			7*24*time.Hour, sessionMessages, nil, false)
		if err != nil {
			b.Fatal(err)
		}
		if err := mach.CryptoStore.PutGroupSession(ctx, igs); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMegolmDecrypt measures the cost of decrypting one Megolm room
// event: the floor (goolm's inbound group session alone: ratchet, AES, MAC
// and the Ed25519 signature check) and mautrix's OlmMachine.DecryptMegolmEvent
// as opsbot calls it, on the memory store and on the SQL crypto store in
// opsbot's SQLite and Postgres databases.
func BenchmarkMegolmDecrypt(b *testing.B) {
	b.Run("floor-goolm", benchGoolmFloor)
	b.Run("machine-memory", func(b *testing.B) { benchMachine(b, "", false) })
	for _, db := range storetest.Dialects {
		b.Run("machine-"+db, func(b *testing.B) { benchMachine(b, db, false) })
		b.Run("machine-"+db+"-bare", func(b *testing.B) { benchMachine(b, db, true) })
	}
}

func benchGoolmFloor(b *testing.B) {
	type msg struct {
		in         *session.MegolmInboundSession
		ciphertext []byte
	}
	plaintext := megolmPlaintext(bench.RoomID(0))
	var out *session.MegolmOutboundSession
	var in *session.MegolmInboundSession
	sent := 0
	// Messages are made a batch at a time, untimed, as in benchMachine.
	prepare := func(count int) []msg {
		msgs := make([]msg, 0, count)
		for len(msgs) < count {
			if out == nil || sent == sessionMessages {
				var err error
				if out, err = session.NewMegolmOutboundSession(); err != nil {
					b.Fatal(err)
				}
				if in, err = session.NewMegolmInboundSession([]byte(out.Key())); err != nil {
					b.Fatal(err)
				}
				sent = 0
			}
			ct, err := out.Encrypt(plaintext)
			if err != nil {
				b.Fatal(err)
			}
			sent++
			msgs = append(msgs, msg{in, ct})
		}
		return msgs
	}
	n := 0
	decrypt := func(m msg) {
		pt, _, err := m.in.Decrypt(m.ciphertext)
		if err != nil {
			b.Fatal(err)
		}
		n += len(pt)
	}
	for _, m := range prepare(sessionMessages) {
		decrypt(m)
	}
	b.ResetTimer()
	var elapsed, cpu time.Duration
	for done := 0; done < b.N; {
		b.StopTimer()
		msgs := prepare(min(500, b.N-done))
		runtime.GC()
		b.StartTimer()
		cpu0, start := bench.CPUTime(), time.Now()
		for _, m := range msgs {
			decrypt(m)
		}
		done += len(msgs)
		elapsed, cpu = elapsed+time.Since(start), cpu+bench.CPUTime()-cpu0
	}
	reportPerEvent(b, elapsed, cpu)
	if n != (sessionMessages+b.N)*len(plaintext) {
		b.Fatalf("decrypted %d bytes, want %d", n, (sessionMessages+b.N)*len(plaintext))
	}
}

func reportPerEvent(b *testing.B, elapsed, cpu time.Duration) {
	b.StopTimer()
	bench.Report(b, "us/event", float64(elapsed.Nanoseconds())/1e3/float64(b.N))
	bench.Report(b, "cpu-us/event", float64(cpu.Nanoseconds())/1e3/float64(b.N))
}

func benchMachine(b *testing.B, dbType string, bare bool) {
	ctx := context.Background()
	var mach *crypto.OlmMachine
	if dbType == "" {
		mach = newMachine(b, nil, mautrix.NewMemoryStateStore().(crypto.StateStore))
	} else {
		st, _ := openStore(b, dbType)
		ss := store.NewCachedStateStore(st.DB) // as appservice.New hands it to e2ee
		if err := ss.Upgrade(ctx); err != nil {
			b.Fatal(err)
		}
		mach = newMachineOn(b, st.DB, ss, bare)
	}
	// The message indexes opsbot's store holds back are written a
	// transaction's worth at a time. In opsbot they go with the done marks,
	// in a commit the marks need anyway, so their cost belongs to the full
	// pipeline (BenchmarkEncryptedIntake); here they are written in commits
	// of their own, not timed.
	var flushTime, flushCPU time.Duration
	flush := func() {}
	if s, ok := mach.CryptoStore.(*e2ee.Store); ok {
		flush = func() {
			start, cpu := time.Now(), bench.CPUTime()
			if err := s.Shared().FlushIndexes(ctx); err != nil {
				b.Fatal(err)
			}
			flushTime += time.Since(start)
			flushCPU += bench.CPUTime() - cpu
		}
	}
	s := newSender(b)
	receive(b, mach, s)
	run := bench.NewRun()
	// Events are made a batch at a time, untimed: all b.N of them at once
	// would be tens of megabytes live while the timer runs, and the
	// garbage collector's work on them would be billed to decryption.
	next := 0
	prepare := func(count int) []*event.Event {
		evts := make([]*event.Event, count)
		for k := range evts {
			n, i := next/bench.EventsPerTxn, next%bench.EventsPerTxn
			next++
			evt, _, err := pipeline.Parse(store.InboxEvent{Kind: store.KindPDU, Payload: s.encryptedEvent(b, run, n, i)})
			if err != nil {
				b.Fatal(err)
			}
			evts[k] = evt
		}
		return evts
	}
	decrypt := func(evt *event.Event) {
		dec, err := mach.DecryptMegolmEvent(ctx, evt)
		if err != nil {
			b.Fatal(err)
		}
		if msg, ok := dec.Content.Parsed.(*event.MessageEventContent); !ok || msg.MsgType != event.MsgText {
			b.Fatalf("decrypted %T, not a text message", dec.Content.Parsed)
		}
	}
	for _, evt := range prepare(2 * bench.EventsPerTxn) {
		decrypt(evt)
	}
	flush()
	flushTime, flushCPU = 0, 0
	b.ResetTimer()
	var elapsed, cpu time.Duration
	for done := 0; done < b.N; {
		b.StopTimer()
		evts := prepare(min(10*bench.EventsPerTxn, b.N-done))
		runtime.GC() // the prepared events' garbage is not the decryption's
		b.StartTimer()
		cpu0, start := bench.CPUTime(), time.Now()
		for _, evt := range evts {
			decrypt(evt)
			if done++; done%bench.EventsPerTxn == 0 {
				flush()
			}
		}
		elapsed, cpu = elapsed+time.Since(start), cpu+bench.CPUTime()-cpu0
	}
	flush()
	reportPerEvent(b, elapsed-flushTime, cpu-flushCPU)
}

// BenchmarkEncryptedIntake is BenchmarkIntake's full pipeline in encrypted
// rooms: the bot's OlmMachine (opsbot's crypto store in its database)
// decrypts each event in the crypto stage, and the replies are encrypted
// (intake, inbox, stages, encrypted reply, done); at c=1 also with a skill
// that matches every message but does not answer, which leaves the cost of
// encrypting and sending replies out.
func BenchmarkEncryptedIntake(b *testing.B) {
	for _, c := range []int{1, 4} {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) {
			for _, db := range storetest.Dialects {
				b.Run("full-encrypted-"+db, func(b *testing.B) { benchEncryptedFull(b, c, db, true) })
			}
			if c == 1 {
				for _, db := range storetest.Dialects {
					b.Run("noreply-encrypted-"+db, func(b *testing.B) { benchEncryptedFull(b, c, db, false) })
				}
			}
		})
	}
}

func benchEncryptedFull(b *testing.B, concurrency int, dbType string, reply bool) {
	run := bench.NewRun()
	total := warmup + b.N
	bodies := make([][]byte, total)
	prepare := func(f *fullOpsbot) *machineCrypto {
		mach := newMachine(b, f.Store.DB, f.State)
		s := newSender(b)
		receive(b, mach, s)
		events := make([][]byte, bench.EventsPerTxn)
		for n := range bodies {
			for i := range events {
				events[i] = s.encryptedEvent(b, run, n, i)
			}
			bodies[n] = bench.Transaction(events)
		}
		runtime.GC()
		return &machineCrypto{mach: mach}
	}
	f := newFullOpsbot(b, dbType, run, total, reply, prepare)
	b.SetBytes(int64(len(bodies[0])))
	bench.Drive(b, bench.Load{URL: f.URL, Concurrency: concurrency, Warmup: warmup,
		Body: func(n int, _ []byte) []byte { return bodies[n] }, Done: f.Tracker.Done, Extra: f.Probes})
	if err := f.Tracker.Check(); err != nil {
		b.Fatal(err)
	}
	checkReplies(b, f, total, reply)
}

// BenchmarkMegolmEncrypt measures the cost of encrypting one reply: the
// floor (goolm's outbound group session alone: ratchet, AES, MAC and the
// Ed25519 signature) and mautrix's OlmMachine.EncryptMegolmEvent as the
// outbox calls it, on opsbot's crypto store (outbound sessions in memory)
// and, bare, on mautrix's SQL crypto store (a write per encryption). The
// room key is shared every sessionMessages replies, locally and untimed.
func BenchmarkMegolmEncrypt(b *testing.B) {
	b.Run("floor-goolm", benchEncryptFloor)
	for _, db := range storetest.Dialects {
		b.Run("machine-"+db, func(b *testing.B) { benchEncryptMachine(b, db, false) })
		b.Run("machine-"+db+"-bare", func(b *testing.B) { benchEncryptMachine(b, db, true) })
	}
}

// replyContent is what the benchmark skill answers.
func replyContent() *event.MessageEventContent {
	return &event.MessageEventContent{MsgType: event.MsgNotice, Body: "pong"}
}

func benchEncryptFloor(b *testing.B) {
	room := id.RoomID(bench.RoomID(0))
	plaintext, err := json.Marshal(map[string]any{"room_id": room, "type": "m.room.message", "content": replyContent()})
	if err != nil {
		b.Fatal(err)
	}
	out, err := session.NewMegolmOutboundSession()
	if err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	b.ResetTimer()
	cpu0 := bench.CPUTime()
	start := time.Now()
	var elapsed, cpu time.Duration
	for i := range b.N {
		if i%sessionMessages == sessionMessages-1 {
			elapsed, cpu = elapsed+time.Since(start), cpu+bench.CPUTime()-cpu0
			if out, err = session.NewMegolmOutboundSession(); err != nil {
				b.Fatal(err)
			}
			start, cpu0 = time.Now(), bench.CPUTime()
		}
		if _, err := out.Encrypt(plaintext); err != nil {
			b.Fatal(err)
		}
	}
	reportPerEvent(b, elapsed+time.Since(start), cpu+bench.CPUTime()-cpu0)
}

func benchEncryptMachine(b *testing.B, dbType string, bare bool) {
	ctx := context.Background()
	st, _ := openStore(b, dbType)
	ss := store.NewCachedStateStore(st.DB)
	if err := ss.Upgrade(ctx); err != nil {
		b.Fatal(err)
	}
	mach := newMachineOn(b, st.DB, ss, bare)
	room := id.RoomID(bench.RoomID(0))
	encrypt := func() {
		_, err := mach.EncryptMegolmEvent(ctx, room, event.EventMessage, replyContent())
		if err != nil {
			b.Fatal(err)
		}
	}
	share := func() {
		if err := shareLocally(ctx, mach, room); err != nil {
			b.Fatal(err)
		}
	}
	share()
	encrypt()
	runtime.GC()
	b.ResetTimer()
	var elapsed, cpu time.Duration
	cpu0 := bench.CPUTime()
	start := time.Now()
	for i := range b.N {
		if i%sessionMessages == sessionMessages-1 {
			elapsed, cpu = elapsed+time.Since(start), cpu+bench.CPUTime()-cpu0
			share()
			start, cpu0 = time.Now(), bench.CPUTime()
		}
		encrypt()
	}
	reportPerEvent(b, elapsed+time.Since(start), cpu+bench.CPUTime()-cpu0)
}
