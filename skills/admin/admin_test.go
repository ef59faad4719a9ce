package admin_test

import (
	"context"
	"strings"
	"testing"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/admin"
	"github.com/opsbot/opsbot/skills/skilltest"
)

func TestStatusIsForAdminsOnly(t *testing.T) {
	s := admin.New([]string{"@boss:example.org"}, func(context.Context) string { return "all good" })
	h := skilltest.New(t, []skills.Skill{s}, nil)
	// skilltest speaks as @alice, who is not an admin.
	if got := strings.Join(h.Say("!status"), "|"); got != "You are not allowed to use !status here." {
		t.Fatalf("non-admin got %q", got)
	}
	if _, err := skilltest.Setup([]skills.Skill{admin.New(nil, nil)}, nil); err == nil || !strings.Contains(err.Error(), "permissions.admins") {
		t.Fatalf("admin skill without admins: %v", err)
	}
	s2 := admin.New([]string{"@alice:example.org"}, func(context.Context) string { return "all good" })
	if got := strings.Join(skilltest.New(t, []skills.Skill{s2}, nil).Say("!status"), "|"); got != "all good" {
		t.Fatalf("admin got %q", got)
	}
}
