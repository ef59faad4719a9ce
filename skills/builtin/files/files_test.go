package files_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/builtin/files"
	"github.com/opsbot/opsbot/skills/skilltest"
)

func TestChecksumAndMirror(t *testing.T) {
	h := skilltest.New(t, []skills.Skill{files.New()}, map[string]string{"files": "max_bytes: 1000"})
	if got := h.Say("!sha256"); len(got) != 1 || !strings.Contains(got[0], "Send me a file first") {
		t.Fatalf("without a file: %q", got)
	}
	data := bytes.Repeat([]byte("opsbot"), 100)
	if got := h.SendFile("report.txt", "text/plain", data); len(got) != 0 {
		t.Fatalf("a file alone must not get an answer: %q", got)
	}
	sum := sha256.Sum256(data)
	want := "sha256 " + hex.EncodeToString(sum[:]) + " (600 bytes, report.txt)"
	if got := h.Say("!sha256"); len(got) != 1 || got[0] != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	h.Say("!mirror")
	last := h.Sender.Actions[len(h.Sender.Actions)-1]
	if last.Content["msgtype"] != "m.file" || last.Content["body"] != "report.txt" {
		t.Fatalf("mirror sent %v", last.Content)
	}
	if back := h.Sender.Files[id.ContentURIString(last.Content["url"].(string))]; !bytes.Equal(back, data) {
		t.Fatalf("mirrored file differs: %d bytes", len(back))
	}
	// Too large for max_bytes: the skill reports a failure instead of downloading it all.
	h.SendFile("big.bin", "application/octet-stream", bytes.Repeat([]byte{1}, 2000))
	if got := h.Say("!sha256"); len(got) != 1 || !strings.Contains(got[0], "failed") {
		t.Fatalf("oversized: %q", got)
	}
}

func TestBadSettings(t *testing.T) {
	for cfg, want := range map[string]string{
		"max_bytes: 0":   "skills.files.max_bytes: must be positive",
		"remember: soon": "skills.files.remember:",
		"maxbytes: 1":    "skills.files.maxbytes: unknown key",
	} {
		if _, err := skilltest.Setup([]skills.Skill{files.New()}, map[string]string{"files": cfg}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config %q: want error %q, got %v", cfg, want, err)
		}
	}
}
