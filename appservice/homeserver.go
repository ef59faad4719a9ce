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
)

// waitForHomeserver blocks until /versions answers, logging while it waits,
// so that opsbot can start before its homeserver (as in a Kubernetes pod).
func (s *Service) waitForHomeserver(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		versions, err := s.AS.BotClient().Versions(cctx)
		cancel()
		if err == nil {
			s.versions = versions
			s.Log.Info().Str("homeserver", s.Cfg.Homeserver.Address).Strs("versions", versionStrings(versions)).Msg("Homeserver reachable")
			return nil
		}
		if attempt == 1 || attempt%10 == 0 {
			s.Log.Warn().Err(err).Str("homeserver", s.Cfg.Homeserver.Address).Msg("Homeserver not reachable yet; waiting")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("homeserver %s never became reachable: %w", s.Cfg.Homeserver.Address, errors.Join(err, ctx.Err()))
		case <-time.After(time.Second):
		}
	}
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
	delay := time.Second
	for attempt := 1; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := discovery.Resolve(cctx, client, domain)
		cancel()
		if err == nil {
			log.Info().Str("domain", domain).Str("well_known", res.WellKnownURL).Str("base_url", res.BaseURL).
				Strs("versions", res.Versions).Msg("Discovered the homeserver through .well-known")
			cfg.Homeserver.Address = res.BaseURL
			return nil
		}
		err = discoveryError(domain, err)
		if attempt == 1 || attempt%10 == 0 {
			log.Warn().Err(err).Int("attempt", attempt).Msg("Homeserver not found through .well-known yet; retrying")
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 10*time.Second)
	}
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
