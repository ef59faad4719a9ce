package config

import "strings"

// Homeserver says which Matrix server opsbot belongs to.
type Homeserver struct {
	// Domain is the server name, the part after ':' in user IDs.
	Domain string `yaml:"domain"`
	// Address is the client-server API base URL opsbot talks to. If empty,
	// it is discovered from Domain's /.well-known/matrix/client.
	Address string `yaml:"address"`
}

func (h Homeserver) validate() error {
	var p problems
	if h.Domain == "" {
		p.add("homeserver.domain", "required: the server name in your users' IDs, e.g. example.org")
	} else if strings.ContainsAny(h.Domain, "/@ ") {
		p.add("homeserver.domain", "%q is not a server name (no scheme, no path)", h.Domain)
	}
	// An empty address is found at start-up from the domain's
	// /.well-known/matrix/client (see appservice/discovery).
	if h.Address != "" {
		if err := checkHTTPURL(h.Address); err != nil {
			p.add("homeserver.address", "%v", err)
		}
	}
	return p.err()
}
