package metrics

import (
	"testing"
	"time"
)

// Element sends polls under MSC3381's unstable names: they must count as
// polls, not as "other".
func TestPollEventsCountAsPolls(t *testing.T) {
	m := New("test", func() int64 { return 0 })
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

func value(t *testing.T, m *Metrics, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := m.Registry.Gather()
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
			return s.GetCounter().GetValue() + s.GetGauge().GetValue()
		}
	}
	return 0
}
