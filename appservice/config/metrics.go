package config

import "net"

// Metrics configures the Prometheus listener.
type Metrics struct {
	// Listen is the host:port serving /metrics; empty turns it off.
	Listen string `yaml:"listen"`
}

// validate leaves out the clash with appservice.listen (Config.crossCheck).
func (m Metrics) validate() error {
	var p problems
	if m.Listen != "" {
		if _, _, err := net.SplitHostPort(m.Listen); err != nil {
			p.add("metrics.listen", "%q is not host:port", m.Listen)
		}
	}
	return p.err()
}
