package metrics

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"maunium.net/go/mautrix/id"
)

// Element sends polls under MSC3381's unstable names: they must count as
// polls, not as "other".
func TestPollEventsCountAsPolls(t *testing.T) {
	m := New(Options{Version: "test", Backlog: func() int64 { return 0 }})
	for unstable, stable := range map[string]string{
		"org.matrix.msc3381.poll.start":    "m.poll.start",
		"org.matrix.msc3381.poll.response": "m.poll.response",
		"org.matrix.msc3381.poll.end":      "m.poll.end",
		"m.poll.start":                     "m.poll.start",
	} {
		if got := EventType(unstable); got != stable {
			t.Errorf("EventType(%q) = %q, want %q", unstable, got, stable)
		}
		m.ObserveEvent(unstable, time.Millisecond)
	}
	if n := value(t, m, "opsbot_events_total", map[string]string{"type": "m.poll.start"}); n != 2 {
		t.Errorf("m.poll.start counted %v times, want 2 (unstable and stable name)", n)
	}
	if n := value(t, m, "opsbot_events_total", map[string]string{"type": "other"}); n != 0 {
		t.Errorf("%v poll events counted as other", n)
	}
	if got := EventType("org.example.custom"); got != "other" {
		t.Errorf("an unknown type maps to %q, want other", got)
	}
}

// The failure series alerts read exist at 0 from the start: a counter
// that first appears at 1 shows no increase to rate() and increase(), so
// the first failure would go unnoticed.
func TestFailureSeriesStartAtZero(t *testing.T) {
	m := New(Options{Version: "test", Backlog: func() int64 { return 0 }})
	bot := id.UserID("@opsbot:example.org")
	m.InitBots([]id.UserID{bot})
	m.InitSkills([]string{"ping"})
	b := bot.String()
	for _, c := range []struct {
		name   string
		labels map[string]string
	}{
		{"opsbot_transactions_total", map[string]string{"outcome": "forbidden"}},
		{"opsbot_transactions_total", map[string]string{"outcome": "unauthorized"}},
		{"opsbot_transactions_total", map[string]string{"outcome": "too_large"}},
		{"opsbot_transactions_total", map[string]string{"outcome": "store_error"}},
		{"opsbot_decryptions_total", map[string]string{"bot": b, "outcome": "no_session"}},
		{"opsbot_decryptions_total", map[string]string{"bot": b, "outcome": "error"}},
		{"opsbot_key_backup_failures_total", map[string]string{"bot": b, "stage": "setup"}},
		{"opsbot_key_backup_failures_total", map[string]string{"bot": b, "stage": "upload"}},
		{"opsbot_key_backup_uploaded_total", map[string]string{"bot": b}},
		{"opsbot_skill_invocations_total", map[string]string{"skill": "ping", "outcome": "error"}},
		{"opsbot_skill_invocations_total", map[string]string{"skill": "ping", "outcome": "panic"}},
		{"opsbot_homeserver_requests_total", map[string]string{"op": "send", "outcome": "failed"}},
		{"opsbot_homeserver_requests_total", map[string]string{"op": "upload", "outcome": "retryable"}},
		{"opsbot_encryptions_total", map[string]string{"outcome": "error"}},
		{"opsbot_to_device_events_total", map[string]string{"outcome": "unknown_device"}},
		{"opsbot_verifications_total", map[string]string{"outcome": "timeout"}},
	} {
		if v, ok := gathered(t, m.Registry, c.name, c.labels); !ok || v != 0 {
			t.Errorf("%s%v = %v (exported: %v) before anything happened, want an exported 0", c.name, c.labels, v, ok)
		}
	}
	m.ObserveDecrypt(bot, "no_session")
	m.ObserveBackupFailure(bot, "upload")
	if n := value(t, m, "opsbot_decryptions_total", map[string]string{"bot": b, "outcome": "no_session"}); n != 1 {
		t.Errorf("no_session decryptions of %s = %v, want 1", bot, n)
	}
	if n := value(t, m, "opsbot_key_backup_failures_total", map[string]string{"bot": b, "stage": "upload"}); n != 1 {
		t.Errorf("upload failures of %s = %v, want 1", bot, n)
	}
}

// gathered returns the value of the series name{labels} as the registry
// exports it (what Prometheus would scrape), and whether it is exported.
func gathered(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, s := range f.GetMetric() {
			if len(s.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range s.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue series
				}
			}
			return s.GetCounter().GetValue() + s.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

func value(t *testing.T, m *Metrics, name string, labels map[string]string) float64 {
	t.Helper()
	v, _ := gathered(t, m.Registry, name, labels)
	return v
}

func TestReadyFollowsItsSource(t *testing.T) {
	if v := value(t, New(Options{Version: "test", Backlog: func() int64 { return 0 }}), "opsbot_ready", nil); v != 0 {
		t.Errorf("opsbot_ready = %v with no source, want 0", v)
	}
	ready := false
	m := New(Options{Version: "test", Backlog: func() int64 { return 0 }, Ready: func() bool { return ready }})
	if v := value(t, m, "opsbot_ready", nil); v != 0 {
		t.Errorf("opsbot_ready = %v while not ready, want 0", v)
	}
	ready = true
	if v := value(t, m, "opsbot_ready", nil); v != 1 {
		t.Errorf("opsbot_ready = %v while ready, want 1", v)
	}
}

// What `promtool check metrics` checks (names, units, counter suffixes,
// help texts), on every series opsbot exports.
func TestMetricsLint(t *testing.T) {
	m := New(Options{Version: "test", Backlog: func() int64 { return 0 }})
	m.InitBots([]id.UserID{"@opsbot:example.org"})
	m.InitSkills([]string{"ping"})
	m.ObserveEvent("m.room.message", time.Millisecond)
	m.ObserveSend("send", nil, time.Millisecond)
	m.ObserveSkill("ping", "ok", time.Millisecond)
	m.OneTimeKeys.WithLabelValues("@opsbot:example.org").Set(50)
	m.CrossSigned.WithLabelValues("@opsbot:example.org").Set(1)
	m.KeyDelivery.WithLabelValues("@opsbot:example.org").Set(1)
	m.KeysBackedUp.WithLabelValues("@opsbot:example.org").Add(3)
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(families).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}
