package main

import (
	"fmt"
	"os"
	"path/filepath"
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
	// The go build of the tests (buildBento) keeps the machine's build
	// cache, whose default lives under XDG_CACHE_HOME: a cold build of
	// the SQLite driver alone takes minutes on a busy machine.
	if os.Getenv("GOCACHE") == "" {
		if cache, err := os.UserCacheDir(); err == nil {
			os.Setenv("GOCACHE", filepath.Join(cache, "go-build"))
		}
	}
	os.Setenv("XDG_CACHE_HOME", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
