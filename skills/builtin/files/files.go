// Package files works on files people send: "!sha256" answers the checksum
// of the last file you sent in the room, and "!mirror" sends that file back.
// In encrypted rooms the bot downloads and decrypts the file, and encrypts
// what it sends back with a fresh key: it shows that attachments work end to
// end, and is handy to check that an upload arrived intact.
package files

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
)

// Settings is the skills.files config section.
type Settings struct {
	// MaxBytes is the largest file the bot downloads.
	MaxBytes int64 `yaml:"max_bytes"`
	// Remember is how long the bot remembers your last file.
	Remember string `yaml:"remember"`
}

// Skill remembers each person's last file per room, in memory only: the
// content of a file message in an encrypted room includes its decryption
// key, which must not be written to the database in the clear.
type Skill struct {
	settings Settings
	remember time.Duration

	mu   sync.Mutex
	last map[key]entry
}

type key struct {
	room   id.RoomID
	sender id.UserID
}

type entry struct {
	content *event.MessageEventContent
	at      time.Time
}

// maxRemembered bounds memory use.
const maxRemembered = 1000

// New returns the files skill.
func New() skills.Skill { return &Skill{last: map[key]entry{}} }

// Name is the skill's config name.
func (*Skill) Name() string { return "files" }

// Setup reads skills.files and registers the matchers.
func (s *Skill) Setup(r *skills.Router, cfg skills.Config) error {
	s.settings = Settings{MaxBytes: 50 << 20, Remember: "15m"}
	if err := cfg.Decode(&s.settings); err != nil {
		return err
	}
	if s.settings.MaxBytes < 1 {
		return cfg.Errorf("max_bytes", "must be positive")
	}
	d, err := time.ParseDuration(s.settings.Remember)
	if err != nil || d <= 0 {
		return cfg.Errorf("remember", "%q is not a positive duration like 15m", s.settings.Remember)
	}
	s.remember = d
	r.Event(event.EventMessage, s.onMessage)
	r.Command("sha256", s.checksum, skills.Help("the SHA-256 of the last file you sent here"))
	r.Command("mirror", s.mirror, skills.Help("send the last file you sent here back to you"))
	return nil
}

func (s *Skill) onMessage(ctx context.Context, ev *skills.Event) error {
	if f := ev.File(); f != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.last) >= maxRemembered {
			s.expire()
		}
		if len(s.last) < maxRemembered {
			s.last[key{ev.RoomID, ev.Sender}] = entry{f, time.Now()}
		}
	}
	return nil
}

// expire drops old entries; the caller holds the lock.
func (s *Skill) expire() {
	for k, e := range s.last {
		if time.Since(e.at) > s.remember {
			delete(s.last, k)
		}
	}
}

func (s *Skill) lastFile(ev *skills.Event) *event.MessageEventContent {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.last[key{ev.RoomID, ev.Sender}]
	if !ok || time.Since(e.at) > s.remember {
		return nil
	}
	return e.content
}

func (s *Skill) fetch(ctx context.Context, ev *skills.Event) (*event.MessageEventContent, []byte, error) {
	f := s.lastFile(ev)
	if f == nil {
		_, err := ev.Reply(ctx, "Send me a file first, then ask again.")
		return nil, nil, err
	}
	data, err := ev.Download(ctx, f, s.settings.MaxBytes)
	if err != nil {
		return nil, nil, fmt.Errorf("downloading %q: %w", f.Body, err)
	}
	return f, data, nil
}

func (s *Skill) checksum(ctx context.Context, ev *skills.Event) error {
	f, data, err := s.fetch(ctx, ev)
	if f == nil || err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	_, err = ev.Reply(ctx, fmt.Sprintf("sha256 %s (%d bytes, %s)", hex.EncodeToString(sum[:]), len(data), fileName(f)))
	return err
}

func (s *Skill) mirror(ctx context.Context, ev *skills.Event) error {
	f, data, err := s.fetch(ctx, ev)
	if f == nil || err != nil {
		return err
	}
	mimetype := "application/octet-stream"
	if f.Info != nil && f.Info.MimeType != "" {
		mimetype = f.Info.MimeType
	}
	_, err = ev.SendFile(ctx, fileName(f), mimetype, data)
	return err
}

func fileName(f *event.MessageEventContent) string {
	if f.FileName != "" {
		return f.FileName
	}
	return f.Body
}
