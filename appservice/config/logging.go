package config

// Logging configures zerolog.
type Logging struct {
	Level  string `yaml:"level"`  // trace, debug, info, warn, error
	Format string `yaml:"format"` // json or pretty
}

func (l *Logging) applyDefaults() {
	if l.Level == "" {
		l.Level = "info"
	}
	if l.Format == "" {
		l.Format = "pretty"
	}
}

func (l Logging) validate() error {
	var p problems
	switch l.Level {
	case "trace", "debug", "info", "warn", "error":
	default:
		p.add("logging.level", "%q is not one of trace, debug, info, warn, error", l.Level)
	}
	switch l.Format {
	case "json", "pretty":
	default:
		p.add("logging.format", "%q is not one of json, pretty", l.Format)
	}
	return p.err()
}
