package history

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/bento-nix/bento/publish"
)

// The database and SQLite's side files must be names no host can take.
func TestFileIsAReservedHostName(t *testing.T) {
	if filepath.Base(filepath.Dir(Path("/r"))) != publish.StateDir {
		t.Fatalf("history.db is not in %s: %s", publish.StateDir, Path("/r"))
	}
	for _, name := range []string{File, File + "-wal", File + "-shm", File + "-journal"} {
		if !slices.Contains(publish.ReservedNames, name) {
			t.Errorf("publish.ReservedNames %v lacks %q", publish.ReservedNames, name)
		}
	}
}
