package config

import "time"

// Leader configures leadership among replicas (Postgres).
type Leader struct {
	// Lease is how long a leader that stops renewing (paused, stuck, cut
	// off from the database) keeps leadership before a standby takes over.
	Lease Duration `yaml:"lease"`
}

func (l *Leader) applyDefaults() {
	if l.Lease == 0 {
		l.Lease = Duration(10 * time.Second)
	}
}

func (l Leader) validate() error {
	var p problems
	if d := time.Duration(l.Lease); d < 3*time.Second || d > 5*time.Minute {
		p.add("leader.lease", "must be between 3s and 5m")
	}
	return p.err()
}
