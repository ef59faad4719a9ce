package config

// Database selects where opsbot keeps its state.
type Database struct {
	Type         string `yaml:"type"` // sqlite or postgres
	URI          string `yaml:"uri"`
	MaxOpenConns int    `yaml:"max_open_conns"`
}

// DefaultSQLiteURI is the database file when database.uri is left out.
const DefaultSQLiteURI = "opsbot.db"

func (d *Database) applyDefaults() {
	if d.Type == "" {
		d.Type = "sqlite"
	}
	if d.URI == "" && d.Type == "sqlite" {
		d.URI = DefaultSQLiteURI
	}
}

func (d Database) validate() error {
	var p problems
	switch d.Type {
	case "sqlite":
	case "postgres":
		if d.URI == "" {
			p.add("database.uri", "required for postgres (e.g. postgres://opsbot@localhost/opsbot, or OPSBOT_DATABASE_URI)")
		}
	default:
		p.add("database.type", "%q is not one of sqlite, postgres", d.Type)
	}
	if d.MaxOpenConns < 0 {
		p.add("database.max_open_conns", "must not be negative")
	}
	return p.err()
}
