//go:build !unix

package harness

import "os"

func lockFile(path string) (unlock func(), err error) { return func() {}, nil }

func terminate(p *os.Process) error { return p.Kill() }
