package publish_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/publish"
)

// Publications within one second still give manifest.json a new whole-
// second mtime: watching agents compare size and mtime over SFTP.
func TestEachManifestGetsALaterSecond(t *testing.T) {
	dir := newFleet(t, map[string]string{"modules/a.nix": "{ a = 1; }\n"}, false)
	root := t.TempDir()
	clock := time.Date(2026, 12, 3, 12, 0, 0, 100e6, time.UTC)
	at := func(now time.Time) func(*publish.Options) {
		return func(o *publish.Options) { o.Now = func() time.Time { return now }; o.Users = false }
	}
	var prev time.Time
	for i, content := range []string{"{ a = 2; }\n", "{ a = 3; }\n", "{ a = 4; }\n"} {
		writeFleet(t, dir, map[string]string{"modules/a.nix": content}, false)
		deploy(t, root, targets(dir, "alpha"), at(clock.Add(time.Duration(i)*100*time.Millisecond)))
		fi, err := os.Stat(filepath.Join(root, "alpha", manifest.ManifestFile))
		if err != nil {
			t.Fatal(err)
		}
		if i > 0 && fi.ModTime().Sub(prev) < time.Second {
			t.Errorf("publication %d: manifest mtime %s, previous %s: want a later whole second", i, fi.ModTime(), prev)
		}
		prev = fi.ModTime()
	}
}
