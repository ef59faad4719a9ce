package harness_test

import (
	"testing"
	"time"

	"opsbot/integration/harness"
)

func TestScratchSleep(t *testing.T) {
	harness.Start(t, harness.Options{})
	time.Sleep(30 * time.Second)
}
