package publish

import (
	"os"
	"path/filepath"
	"time"

	"github.com/bento-nix/bento/manifest"
)

// advanceMtime gives the new manifest tmp a modification time in a later
// whole second than the live manifest's. Watching agents notice a
// publication by a change of manifest.json's size or mtime over SFTP,
// which carries whole seconds, and two manifests of a host usually have
// the same size: without this, a second publication within the same
// second would go unseen until the next timer tick.
func advanceMtime(hostDir, tmp string, now time.Time) error {
	t := now.Truncate(time.Second)
	if fi, err := os.Stat(filepath.Join(hostDir, manifest.ManifestFile)); err == nil {
		if prev := fi.ModTime().Truncate(time.Second); !t.After(prev) {
			t = prev.Add(time.Second)
		}
	}
	return os.Chtimes(tmp, t, t)
}
