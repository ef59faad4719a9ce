package integration

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"time"
)

func contains(list []string, s string) bool { return slices.Contains(list, s) }

func writeFile(path, text string) error { return os.WriteFile(path, []byte(text), 0o600) }

func runCmd(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

func toJSON(v any) string {
	data, _ := json.Marshal(v)
	return string(data)
}
