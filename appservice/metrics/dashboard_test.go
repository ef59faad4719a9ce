package metrics

import (
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Every metric the Grafana dashboard in deploy/ queries must exist.
func TestDashboardUsesExistingMetrics(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	data, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "deploy", "grafana", "opsbot-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	m := New("test", func() int64 { return 0 })
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
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range families {
		have[f.GetName()] = true
	}
	used := regexp.MustCompile(`opsbot_[a-z_]+`).FindAllString(string(data), -1)
	if len(used) == 0 {
		t.Fatal("the dashboard uses no opsbot metrics")
	}
	for _, name := range used {
		base := name
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			base = strings.TrimSuffix(base, suffix)
		}
		if !have[name] && !have[base] {
			t.Errorf("the dashboard queries %s, which opsbot does not export", name)
		}
	}
}
