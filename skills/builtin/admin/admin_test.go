package admin_test

import (
	"strings"
	"testing"

	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/builtin/admin"
	"github.com/opsbot/opsbot/skills/skilltest"
)

func TestStatusIsForAdminsOnly(t *testing.T) {
	host := &skilltest.Host{AdminIDs: []id.UserID{"@boss:example.org"}, StatusReport: "all good"}
	h, err := skilltest.SetupWithHost(host, []skills.Skill{admin.New()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// skilltest speaks as @alice, who is not an admin.
	if got := strings.Join(h.Say("!status"), "|"); got != "You are not allowed to use !status here." {
		t.Fatalf("non-admin got %q", got)
	}
	if _, err := skilltest.SetupWithHost(&skilltest.Host{}, []skills.Skill{admin.New()}, nil); err == nil || !strings.Contains(err.Error(), "permissions.admins") {
		t.Fatalf("admin skill without admins: %v", err)
	}
	if _, err := skilltest.Setup([]skills.Skill{admin.New()}, nil); err == nil || !strings.Contains(err.Error(), "Host") {
		t.Fatalf("admin skill without a host: %v", err)
	}
	host.AdminIDs = []id.UserID{"@alice:example.org"}
	h, err = skilltest.SetupWithHost(host, []skills.Skill{admin.New()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(h.Say("!status"), "|"); got != "all good" {
		t.Fatalf("admin got %q", got)
	}
	host.ReloadResult = "Reloaded: opsbot"
	if got := strings.Join(h.Say("!reload"), "|"); got != "Reloaded: opsbot" {
		t.Fatalf("reload: %q", got)
	}
}
