package skills_test

import (
	"context"
	"strings"
	"testing"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/skilltest"
)

func TestParseMatcher(t *testing.T) {
	var got []string
	s := funcSkill{"p", func(r *skills.Router) error {
		r.Parse("remind me in {minutes:d} minutes to {task}", func(ctx context.Context, ev *skills.Event) error {
			got = append(got, ev.Arg("task"))
			if ev.Values["minutes"].(int) != 10 {
				t.Errorf("minutes = %v", ev.Values["minutes"])
			}
			_, err := ev.Reply(ctx, "ok")
			return err
		})
		r.Parse("rate {x:f}", func(ctx context.Context, ev *skills.Event) error {
			got = append(got, "rate")
			if ev.Values["x"].(float64) != 2.5 {
				t.Errorf("x = %v", ev.Values["x"])
			}
			return nil
		})
		return nil
	}}
	h := skilltest.New(t, []skills.Skill{s}, nil)
	h.Say("Remind me in 10 minutes to   check the deploy")
	h.Say("remind me in ten minutes to x")
	h.Say("rate 2.5")
	h.Say("rate 2.5 please")
	if strings.Join(got, "|") != "check the deploy|rate" {
		t.Fatalf("got %q", got)
	}
	for _, bad := range []string{"", "x {a} {a}", "x {a:q}", "x {a"} {
		if _, err := skilltest.Setup([]skills.Skill{funcSkill{"b", func(r *skills.Router) error {
			r.Parse(bad, func(context.Context, *skills.Event) error { return nil })
			return nil
		}}}, nil); err == nil {
			t.Errorf("parse pattern %q accepted", bad)
		}
	}
}
