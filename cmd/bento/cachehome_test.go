package main

import (
	"fmt"
	"os"
	"testing"
)

// TestMain keeps the package's tests (and the bento binaries they start)
// from filling the runner's ~/.cache/bento: every command that evaluates a
// fleet leaves a completion cache there.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bento-cache-home-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("XDG_CACHE_HOME", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
