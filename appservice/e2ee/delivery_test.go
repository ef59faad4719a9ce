package e2ee

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// fakeFeatures is a FeatureStore in memory.
type fakeFeatures struct {
	mu      sync.Mutex
	seen    map[string]time.Time
	forgets int
}

func (f *fakeFeatures) SeenFeatures(context.Context) (map[string]time.Time, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]time.Time{}
	for k, v := range f.seen {
		out[k] = v
	}
	return out, nil
}

func (f *fakeFeatures) RecordFeatures(_ context.Context, names ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range names {
		if _, ok := f.seen[n]; !ok {
			f.seen[n] = time.Now()
		}
	}
	return nil
}

func (f *fakeFeatures) ForgetFeatures(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen = map[string]time.Time{}
	f.forgets++
	return nil
}

func (f *fakeFeatures) recorded() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.seen)
}

func TestAdvertises(t *testing.T) {
	for _, tc := range []struct {
		features map[string]bool
		want     bool
	}{
		{nil, false},
		{map[string]bool{"org.matrix.msc3202": true}, false},
		{map[string]bool{"org.matrix.msc2409": true}, false},
		{map[string]bool{"org.matrix.msc3202": true, "org.matrix.msc2409": true}, true},
		{map[string]bool{"org.matrix.msc3202": true, "org.matrix.msc2409.to_device": true}, true},
		{map[string]bool{"org.matrix.msc3202": false, "org.matrix.msc2409": true}, false},
	} {
		if got := Advertises(&mautrix.RespVersions{UnstableFeatures: tc.features}); got != tc.want {
			t.Errorf("Advertises(%v) = %v, want %v", tc.features, got, tc.want)
		}
	}
	if Advertises(nil) {
		t.Error("Advertises(nil) = true")
	}
}

// What transactions carry is recorded once, durably, and a probe waiting
// for both features returns when the second one comes.
func TestTransactionsRecordWhatTheyCarry(t *testing.T) {
	store := &fakeFeatures{seen: map[string]time.Time{}}
	tr := newTransactions(store, zerolog.Nop())
	done := make(chan bool)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- tr.waitFor(ctx, FeatureToDevice, FeatureDeviceInfo)
	}()
	tr.Observe(false, false)
	tr.Observe(true, false)
	select {
	case <-done:
		t.Fatal("the wait ended with only to-device events seen")
	case <-time.After(50 * time.Millisecond):
	}
	tr.Observe(false, true)
	if !<-done {
		t.Fatal("the wait did not end once both were seen")
	}
	deadline := time.Now().Add(5 * time.Second)
	for store.recorded() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("recorded %d features, want 2", store.recorded())
		}
		time.Sleep(10 * time.Millisecond)
	}
	since, err := SeenBefore(context.Background(), store)
	if err != nil || since.IsZero() {
		t.Fatalf("SeenBefore = %v, %v", since, err)
	}
	// Without device information recorded, earlier runs prove nothing.
	half := &fakeFeatures{seen: map[string]time.Time{FeatureToDevice: time.Now()}}
	if since, _ := SeenBefore(context.Background(), half); !since.IsZero() {
		t.Fatal("SeenBefore with only msc2409 recorded")
	}
}

// A probe answered late still counts: bots waiting for keys in
// transactions get them, once.
func TestTransactionsLateKeys(t *testing.T) {
	tr := newTransactions(nil, zerolog.Nop())
	calls := 0
	tr.start(ModeSync, func() { calls++ })
	tr.Observe(true, false)
	if calls != 0 {
		t.Fatal("called before device information was seen")
	}
	tr.Observe(true, true)
	tr.Observe(true, true)
	if calls != 1 {
		t.Fatalf("called %d times, want once", calls)
	}
	// Seen before the mode was decided: called at start.
	early := newTransactions(nil, zerolog.Nop())
	early.Observe(true, true)
	calls = 0
	early.start(ModeSync, func() { calls++ })
	if calls != 1 {
		t.Fatalf("called %d times at start, want once", calls)
	}
}

// In appservice mode, transactions that stop carrying device information
// (the homeserver's feature switched off) make opsbot forget what it saw,
// so that the next start finds out again.
func TestTransactionsWithoutDeviceInfo(t *testing.T) {
	store := &fakeFeatures{seen: map[string]time.Time{FeatureToDevice: time.Now(), FeatureDeviceInfo: time.Now()}}
	tr := newTransactions(store, zerolog.Nop())
	tr.start(ModeAppservice, func() {})
	for i := 0; i < withoutDeviceInfoLimit-1; i++ {
		tr.Observe(false, false)
	}
	tr.Observe(false, true) // one with: the count starts again
	for i := 0; i < withoutDeviceInfoLimit-1; i++ {
		tr.Observe(false, false)
	}
	if store.forgets != 0 {
		t.Fatal("forgot after fewer transactions without device information than the limit")
	}
	tr.Observe(false, false)
	tr.Observe(false, false)
	if store.forgets != 1 {
		t.Fatalf("forgot %d times, want once", store.forgets)
	}
	if since, _ := SeenBefore(context.Background(), store); !since.IsZero() {
		t.Fatal("still remembered after forgetting")
	}
}

// A homeserver asked once and found not to push keys in transactions is
// not waited for again at every start; evidence that it does wins, and
// with MSC4190 (devices that cannot /sync) keys can only come in
// transactions, confirmed or not.
func TestChooseModeRemembersAnUnansweredProbe(t *testing.T) {
	hs := &fakeHomeserver{}
	base := hs.start(t, func(*http.Request) string { return `{}` })
	client, err := mautrix.NewClient(base, "@bot:example.org", "token")
	if err != nil {
		t.Fatal(err)
	}
	client.DeviceID = "OPSBOTABCDEFGHIJ"
	saved := ProbeTimeout
	ProbeTimeout = 200 * time.Millisecond
	t.Cleanup(func() { ProbeTimeout = saved })
	manager := func(features *fakeFeatures, msc4190 bool) *Manager {
		m := New(Options{Features: features, MSC4190: msc4190, Log: zerolog.Nop()})
		dev := &Device{UserID: client.UserID, DeviceID: client.DeviceID, Client: client}
		m.devices[dev.UserID], m.order = dev, []id.UserID{dev.UserID}
		return m
	}
	ctx := context.Background()
	features := &fakeFeatures{seen: map[string]time.Time{}}

	start := time.Now()
	mode, why, unconfirmed := manager(features, false).chooseMode(ctx, nil)
	if mode != ModeSync || unconfirmed || time.Since(start) < ProbeTimeout || features.seen[NotPushed].IsZero() {
		t.Fatalf("first start: %s (%s) after %v, noted %v", mode, why, time.Since(start), features.seen)
	}
	start = time.Now()
	mode, why, _ = manager(features, false).chooseMode(ctx, nil)
	if mode != ModeSync || time.Since(start) >= ProbeTimeout || !strings.Contains(why, "when asked") {
		t.Fatalf("second start: %s (%s) after %v, want sync without the wait", mode, why, time.Since(start))
	}
	if probes := len(hs.reqs); probes != 2 {
		t.Fatalf("%d probes sent, want one per start (a late answer is still recorded)", probes)
	}

	mode, why, unconfirmed = manager(features, true).chooseMode(ctx, nil)
	if mode != ModeAppservice || !unconfirmed {
		t.Fatalf("with MSC4190: %s (%s) unconfirmed=%v, want appservice, unconfirmed", mode, why, unconfirmed)
	}

	_ = features.RecordFeatures(ctx, FeatureToDevice, FeatureDeviceInfo)
	if mode, why, _ = manager(features, false).chooseMode(ctx, nil); mode != ModeAppservice {
		t.Fatalf("with evidence recorded: %s (%s)", mode, why)
	}
}

// A device whose keys are to come in transactions, the start's probe
// unanswered, still counts for a room's decryption for keyDeliveryGrace
// after start (events wait for their key, as for a late room key); after
// that its problem is final, and a refusal (Synapse's /sync for the
// sender) or a device with no way in is final at once.
func TestKeyProblemGrace(t *testing.T) {
	const bot = id.UserID("@bot:x")
	for _, c := range []struct {
		name            string
		unanswered      bool
		viaTransactions bool
		age             time.Duration
		counts          bool
	}{
		{"just started", true, true, time.Second, true},
		{"after the grace", true, true, keyDeliveryGrace + time.Second, false},
		{"no way in", true, false, time.Second, false},
		{"refused, not unanswered", false, true, time.Second, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := &Device{UserID: bot, viaTransactions: c.viaTransactions}
			d.noKeys.Store(&noKeys{why: "no keys", since: time.Now().Add(-c.age), unanswered: c.unanswered})
			m := &Manager{devices: map[id.UserID]*Device{bot: d}, order: []id.UserID{bot}}
			devs, why := m.roomDevices([]id.UserID{bot})
			if got := len(devs) == 1; got != c.counts || (why != "") == c.counts {
				t.Fatalf("devices %v, why %q; want the device to count: %v", devs, why, c.counts)
			}
			if got := m.KeyDelivery()[bot]; !strings.HasPrefix(got, "none: ") {
				t.Fatalf("key delivery reported as %q while the problem lasts", got)
			}
		})
	}
}
