package identity

import (
	"context"
	"crypto/rand"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/crypto/utils"

	"github.com/opsbot/opsbot/appservice/store"
	"github.com/opsbot/opsbot/appservice/store/storetest"
)

func newKey(t *testing.T) string {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	return utils.EncodeBase58RecoveryKey(raw)
}

func TestNormalizeRecoveryKey(t *testing.T) {
	key := newKey(t)
	for _, in := range []string{key, strings.ReplaceAll(key, " ", ""), "  " + key + "\n"} {
		if got, err := NormalizeRecoveryKey(in); err != nil || got != key {
			t.Errorf("NormalizeRecoveryKey(%q) = %q, %v; want %q", in, got, err, key)
		}
	}
	broken := []byte(strings.ReplaceAll(key, " ", ""))
	broken[10] = map[bool]byte{true: 'b', false: 'c'}[broken[10] != 'b'] // parity no longer matches
	for _, in := range []string{"", "hello", string(broken), key + "x"} {
		if _, err := NormalizeRecoveryKey(in); err == nil || !strings.Contains(err.Error(), "not a recovery key") {
			t.Errorf("NormalizeRecoveryKey(%q) = %v, want an error", in, err)
		}
	}
}

// The CLI's view of a bot's secrets, on both databases: a restored key is
// kept with the restore flag, a different key is refused, a reset is
// flagged; a wrong pickle key cannot read the key.
func TestRecoveryKeySecrets(t *testing.T) {
	for _, dialect := range storetest.Dialects {
		t.Run(dialect, func(t *testing.T) {
			ctx := context.Background()
			st, err := store.Open(storetest.Config(t, dialect), zerolog.Nop())
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			pickle := []byte("a pickle key of some length")
			s, err := Secrets(ctx, st.DB, pickle, "@bot:x")
			if err != nil {
				t.Fatal(err)
			}
			key := newKey(t)
			if err := RestoreRecoveryKey(ctx, s, strings.ReplaceAll(key, " ", "")); err != nil {
				t.Fatal(err)
			}
			if got, _ := s.GetSecret(ctx, SecretRecoveryKey); got != key {
				t.Fatalf("stored %q, want %q", got, key)
			}
			if flag, _ := s.GetSecret(ctx, SecretRestore); flag == "" {
				t.Fatal("restore flag not set")
			}
			if err := RestoreRecoveryKey(ctx, s, key); err != nil {
				t.Fatalf("restoring the same key again: %v", err)
			}
			if err := RestoreRecoveryKey(ctx, s, newKey(t)); err == nil || !strings.Contains(err.Error(), "different recovery key") {
				t.Fatalf("a different key: %v", err)
			}
			if err := RequestReset(ctx, s); err != nil {
				t.Fatal(err)
			}
			if flag, _ := s.GetSecret(ctx, SecretReset); flag == "" {
				t.Fatal("reset flag not set")
			}
			// Another bot's secrets are its own.
			other, err := Secrets(ctx, st.DB, pickle, "@other:x")
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := other.GetSecret(ctx, SecretRecoveryKey); got != "" {
				t.Fatalf("another bot sees %q", got)
			}
			wrong, _ := Secrets(ctx, st.DB, []byte("not the pickle key at all"), "@bot:x")
			if got, err := wrong.GetSecret(ctx, SecretRecoveryKey); err == nil && got == key {
				t.Fatal("a wrong pickle key read the recovery key")
			}
		})
	}
}
