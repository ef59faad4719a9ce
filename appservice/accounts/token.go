package accounts

import (
	"errors"
	"fmt"
	"strings"

	"maunium.net/go/mautrix/crypto/goolm/libolmpickle"

	"github.com/opsbot/opsbot/appservice/store"
)

// A client-mode bot's access token is stored encrypted with the pickle key
// (encryption.pickle_key), as the bots' private keys are, so that a copy
// of the database alone cannot act as the bot. Without a pickle key
// (encryption off and no key set) it is stored as it is.
const sealedPrefix = "pickled:"

func sealToken(key []byte, token string) (string, error) {
	if len(key) == 0 {
		return token, nil
	}
	sealed, err := libolmpickle.Pickle(key, []byte(token))
	if err != nil {
		return "", fmt.Errorf("encrypting the login for the database: %w", err)
	}
	return sealedPrefix + string(sealed), nil
}

func openToken(key []byte, stored string) (string, error) {
	sealed, ok := strings.CutPrefix(stored, sealedPrefix)
	if !ok {
		return stored, nil
	}
	if len(key) == 0 {
		return "", errors.New("the stored login is encrypted with encryption.pickle_key, which is not set")
	}
	token, err := libolmpickle.Unpickle(key, []byte(sealed))
	if err != nil {
		return "", fmt.Errorf("decrypting the stored login (is encryption.pickle_key the one it was stored with?): %w", err)
	}
	return string(token), nil
}

// StoredToken is the access token of a bot's stored login, decrypted with
// the pickle key it was stored with.
func StoredToken(stored *store.ClientSession, pickleKey []byte) (string, error) {
	return openToken(pickleKey, stored.AccessToken)
}
