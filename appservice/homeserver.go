package appservice

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/discovery"
	"github.com/opsbot/opsbot/skills/retry"
)

// waitForHomeserver blocks until /versions answers, logging while it waits,
// so that opsbot can start before its homeserver (as in a Kubernetes pod).
func (s *Service) waitForHomeserver(ctx context.Context) error {
	err := retry.Do(ctx, retry.Policy{
		Min: time.Second, Max: time.Second,
		Notify: retry.Every(10, func(_ int, err error, _ time.Duration) {
			s.Log.Warn().Err(err).Str("homeserver", s.Cfg.Homeserver.Address).Msg("Homeserver not reachable yet; waiting")
		}),
	}, func() error {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		versions, err := s.AS.BotClient().Versions(cctx)
		if err == nil {
			s.versions = versions
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("homeserver %s never became reachable: %w", s.Cfg.Homeserver.Address, lastAndStop(err))
	}
	s.Log.Info().Str("homeserver", s.Cfg.Homeserver.Address).Strs("versions", versionStrings(s.versions)).Msg("Homeserver reachable")
	return nil
}

// DiscoverHomeserver fills in an empty homeserver.address from
// homeserver.domain's /.well-known/matrix/client. It runs before New, so that
// everything that talks to the homeserver is built with the address found.
// Like waitForHomeserver it keeps trying (the homeserver, or the web server
// with the .well-known document, may start after opsbot) until ctx ends.
func DiscoverHomeserver(ctx context.Context, cfg *config.Config, log zerolog.Logger) error {
	if cfg.Homeserver.Address != "" {
		return nil
	}
	domain := cfg.Homeserver.Domain
	client := &http.Client{}
	var res *discovery.Result
	err := retry.Do(ctx, retry.Policy{
		Min: time.Second, Max: 10 * time.Second,
		Notify: retry.Every(10, func(attempt int, err error, _ time.Duration) {
			log.Warn().Err(err).Int("attempt", attempt).Msg("Homeserver not found through .well-known yet; retrying")
		}),
	}, func() error {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		var err error
		if res, err = discovery.Resolve(cctx, client, domain); err != nil {
			return discoveryError(domain, err)
		}
		return nil
	})
	if err != nil {
		return lastAndStop(err)
	}
	log.Info().Str("domain", domain).Str("well_known", res.WellKnownURL).Str("base_url", res.BaseURL).
		Strs("versions", res.Versions).Msg("Discovered the homeserver through .well-known")
	cfg.Homeserver.Address = res.BaseURL
	return nil
}

// lastAndStop is the error of a start-up wait that ran out of time: the
// last failure and why the wait ended.
func lastAndStop(err error) error {
	if g, ok := err.(*retry.Error); ok {
		return errors.Join(g.Last, g.Stopped)
	}
	return err
}

// discoveryError adds to a discovery failure how to fix it.
func discoveryError(domain string, err error) error {
	return fmt.Errorf("homeserver.address is not set and it could not be discovered: %w; "+
		`set homeserver.address, or serve {"m.homeserver":{"base_url":"https://<client-server API host>"}} at %s`,
		err, discovery.WellKnownURL(domain))
}

func versionStrings(v *mautrix.RespVersions) []string {
	if v == nil {
		return nil
	}
	out := make([]string, 0, len(v.Versions))
	for _, ver := range v.Versions {
		out = append(out, ver.String())
	}
	return out
}
