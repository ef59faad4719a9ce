package bench_test

import (
	"os"
	"testing"

	"github.com/opsbot/opsbot/integration/bench"
)

// TestMain prints the ratios to the floors after the benchmarks of a run
// (nothing when no benchmark ran, as under plain `go test`).
func TestMain(m *testing.M) {
	code := m.Run()
	bench.PrintSummary(os.Stdout)
	os.Exit(code)
}
