// Package cron parses crontab specifications — the standard five
// fields (minute hour day-of-month month day-of-week, with ranges, lists,
// steps and names such as MON-FRI) and the shorthands @every <duration>,
// @hourly, @daily, @weekly, @monthly, @yearly — and computes when they fire.
//
// Ours: no cron library among the fixed dependencies; under 200 lines, fuzzed.
package cron

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Schedule says when a job fires.
type Schedule interface {
	// Next returns the first firing time strictly after t, in t's location
	// (the zero time if there is none within five years).
	Next(t time.Time) time.Time
}

// Every fires at a fixed interval, aligned to the Unix epoch so that
// restarts do not shift it.
type Every time.Duration

// Next implements Schedule.
func (e Every) Next(t time.Time) time.Time {
	d := time.Duration(e)
	return t.Truncate(d).Add(d)
}

// Cron is a parsed five-field specification.
type Cron struct {
	minute, hour, dom, month, dow uint64 // bit sets
	domStar, dowStar              bool
}

var monthNames = map[string]int{"JAN": 1, "FEB": 2, "MAR": 3, "APR": 4, "MAY": 5, "JUN": 6, "JUL": 7, "AUG": 8, "SEP": 9, "OCT": 10, "NOV": 11, "DEC": 12}
var dayNames = map[string]int{"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}

// Parse parses a specification; errors say which field is wrong.
func Parse(spec string) (Schedule, error) {
	spec = strings.TrimSpace(spec)
	switch spec {
	case "@yearly", "@annually":
		spec = "0 0 1 1 *"
	case "@monthly":
		spec = "0 0 1 * *"
	case "@weekly":
		spec = "0 0 * * 0"
	case "@daily", "@midnight":
		spec = "0 0 * * *"
	case "@hourly":
		spec = "0 * * * *"
	}
	if rest, ok := strings.CutPrefix(spec, "@every "); ok {
		d, err := time.ParseDuration(strings.TrimSpace(rest))
		if err != nil || d < time.Second {
			return nil, fmt.Errorf("cron %q: @every needs a duration of at least 1s, like @every 5m", spec)
		}
		return Every(d), nil
	}
	if strings.HasPrefix(spec, "@") {
		return nil, fmt.Errorf("cron %q: unknown shorthand (use @every, @hourly, @daily, @weekly, @monthly or @yearly)", spec)
	}
	f := strings.Fields(spec)
	if len(f) != 5 {
		return nil, fmt.Errorf("cron %q: want 5 fields (minute hour day-of-month month day-of-week), got %d", spec, len(f))
	}
	c := &Cron{domStar: f[2] == "*" || f[2] == "?", dowStar: f[4] == "*" || f[4] == "?"}
	var err error
	fields := []struct {
		name     string
		text     string
		min, max int
		names    map[string]int
		out      *uint64
	}{
		{"minute", f[0], 0, 59, nil, &c.minute},
		{"hour", f[1], 0, 23, nil, &c.hour},
		{"day-of-month", f[2], 1, 31, nil, &c.dom},
		{"month", f[3], 1, 12, monthNames, &c.month},
		{"day-of-week", f[4], 0, 7, dayNames, &c.dow},
	}
	for _, fl := range fields {
		if *fl.out, err = parseField(fl.text, fl.min, fl.max, fl.names); err != nil {
			return nil, fmt.Errorf("cron %q: %s field %q: %v", spec, fl.name, fl.text, err)
		}
	}
	if c.dow&(1<<7) != 0 { // 7 is Sunday too
		c.dow |= 1
	}
	return c, nil
}

func parseField(text string, min, max int, names map[string]int) (uint64, error) {
	var bits uint64
	for _, part := range strings.Split(text, ",") {
		step := 1
		if r, s, ok := strings.Cut(part, "/"); ok {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 {
				return 0, fmt.Errorf("bad step %q", s)
			}
			part, step = r, n
		}
		lo, hi := min, max
		switch {
		case part == "*" || part == "?":
		case strings.Contains(part, "-"):
			a, b, _ := strings.Cut(part, "-")
			var err error
			if lo, err = value(a, names); err != nil {
				return 0, err
			}
			if hi, err = value(b, names); err != nil {
				return 0, err
			}
		default:
			v, err := value(part, names)
			if err != nil {
				return 0, err
			}
			lo, hi = v, v
			if step > 1 {
				hi = max
			}
		}
		if lo < min || hi > max || lo > hi {
			return 0, fmt.Errorf("%d-%d is outside %d-%d", lo, hi, min, max)
		}
		for v := lo; v <= hi; v += step {
			bits |= 1 << uint(v)
		}
	}
	return bits, nil
}

func value(s string, names map[string]int) (int, error) {
	if v, ok := names[strings.ToUpper(s)]; ok {
		return v, nil
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	return v, nil
}

// Next implements Schedule.
func (c *Cron) Next(t time.Time) time.Time {
	t = t.Truncate(time.Minute).Add(time.Minute)
	limit := t.AddDate(5, 0, 0)
	for t.Before(limit) {
		if c.month&(1<<uint(t.Month())) == 0 {
			t = time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, t.Location())
			continue
		}
		if !c.dayMatches(t) {
			t = time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, t.Location())
			continue
		}
		if c.hour&(1<<uint(t.Hour())) == 0 {
			t = time.Date(t.Year(), t.Month(), t.Day(), t.Hour()+1, 0, 0, 0, t.Location())
			continue
		}
		if c.minute&(1<<uint(t.Minute())) == 0 {
			t = t.Add(time.Minute)
			continue
		}
		return t
	}
	return time.Time{}
}

// dayMatches applies cron's rule: when both day fields are restricted, a
// day matching either fires.
func (c *Cron) dayMatches(t time.Time) bool {
	dom := c.dom&(1<<uint(t.Day())) != 0
	dow := c.dow&(1<<uint(t.Weekday())) != 0
	switch {
	case c.domStar && c.dowStar:
		return true
	case c.domStar:
		return dow
	case c.dowStar:
		return dom
	}
	return dom || dow
}
