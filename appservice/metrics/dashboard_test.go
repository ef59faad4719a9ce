package metrics

import (
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"
)

// Every metric the Grafana dashboard and the alert rules in deploy/ query
// must exist.
func TestDashboardUsesExistingMetrics(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	deploy := filepath.Join(filepath.Dir(file), "..", "..", "deploy")
	m := New(Options{Version: "test", Backlog: func() int64 { return 0 }})
	// Touch every vector so that it shows up when gathered.
	m.ObserveEvent("m.room.message", time.Millisecond)
	m.ObserveSend("send", nil, time.Millisecond)
	m.ObserveSkill("ping", "ok", time.Millisecond)
	m.ObserveDecrypt("@bot:x", "ok")
	for _, op := range []string{"encrypt", "to_device"} {
		m.ObserveCrypto(op, "ok")
	}
	m.Transactions.WithLabelValues("ok").Inc()
	m.OneTimeKeys.WithLabelValues("@bot:x").Set(1)
	m.CrossSigned.WithLabelValues("@bot:x").Set(1)
	m.KeyDelivery.WithLabelValues("@bot:x").Set(1)
	m.KeysBackedUp.WithLabelValues("@bot:x").Add(1)
	m.InitBots([]id.UserID{"@bot:x"})
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range families {
		have[f.GetName()] = true
	}
	for _, path := range []string{"grafana/opsbot-dashboard.json", "prometheus/opsbot-alerts.yaml"} {
		data, err := os.ReadFile(filepath.Join(deploy, path))
		if err != nil {
			t.Fatal(err)
		}
		used := regexp.MustCompile(`opsbot_[a-z_]+`).FindAllString(string(data), -1)
		if len(used) == 0 {
			t.Fatalf("%s uses no opsbot metrics", path)
		}
		for _, name := range used {
			base := name
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				base = strings.TrimSuffix(base, suffix)
			}
			if !have[name] && !have[base] {
				t.Errorf("%s queries %s, which opsbot does not export", path, name)
			}
		}
	}
}
