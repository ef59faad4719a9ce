package cron

import (
	"strings"
	"testing"
	"time"
)

func TestNext(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		berlin = time.FixedZone("CET", 3600)
	}
	base := time.Date(2026, 11, 26, 9, 30, 15, 0, time.UTC) // a Thursday
	cases := []struct {
		spec string
		from time.Time
		want time.Time
	}{
		{"*/15 * * * *", base, time.Date(2026, 11, 26, 9, 45, 0, 0, time.UTC)},
		{"0 9 * * MON-FRI", base, time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)},
		{"0 9 * * mon-fri", time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC), time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)},
		{"30 2 1 JAN,JUL *", base, time.Date(2027, 1, 1, 2, 30, 0, 0, time.UTC)},
		{"0 0 * * 7", base, time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)},
		{"0 12 13 * 5", base, time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)}, // Friday or the 13th
		{"@daily", base, time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)},
		{"@hourly", base, time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)},
		{"@every 10m", base, time.Date(2026, 11, 26, 9, 40, 0, 0, time.UTC)},
		{"0 9 * * *", base.In(berlin), time.Date(2026, 11, 27, 9, 0, 0, 0, berlin)},
		{"0 0 29 2 *", base, time.Date(2028, 2, 29, 0, 0, 0, 0, time.UTC)},
	}
	for _, c := range cases {
		s, err := Parse(c.spec)
		if err != nil {
			t.Fatalf("%s: %v", c.spec, err)
		}
		if got := s.Next(c.from); !got.Equal(c.want) {
			t.Errorf("%s after %v: got %v, want %v", c.spec, c.from, got, c.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	cases := map[string]string{
		"* * * *":      "want 5 fields",
		"60 * * * *":   "minute field",
		"* 24 * * *":   "hour field",
		"* * 0 * *":    "day-of-month field",
		"* * * FOO *":  "month field",
		"* * * * 8":    "day-of-week field",
		"*/0 * * * *":  "bad step",
		"@every 10":    "@every needs a duration",
		"@every 10ms":  "at least 1s",
		"@fortnightly": "unknown shorthand",
		"5-1 * * * *":  "outside",
		"a * * * *":    "is not a number",
	}
	for spec, want := range cases {
		if _, err := Parse(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: want error containing %q, got %v", spec, want, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"*/5 * * * *", "0 9 * * MON-FRI", "@every 1m", "1,2,3 1-5/2 * JAN-DEC SUN", "@daily"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		s, err := Parse(spec)
		if err != nil {
			return
		}
		from := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		if next := s.Next(from); !next.IsZero() && !next.After(from) {
			t.Fatalf("%q: next %v is not after %v", spec, next, from)
		}
	})
}
