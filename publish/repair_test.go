package publish_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/bento-nix/bento/publish"
)

// An object the live manifest names but the chroot lost (hands, a damaged
// disk) is linked again by the next publication instead of being named by
// a manifest that no host can fully download.
func TestNewPublicationRelinksALostObject(t *testing.T) {
	dir := newFleet(t, map[string]string{"modules/a.nix": "{ a = 1; }\n", "modules/b.nix": "{ b = 1; }\n"}, false)
	root := t.TempDir()
	noUsers := func(o *publish.Options) { o.Users = false }
	deploy(t, root, targets(dir, "alpha"), noUsers)
	m := readManifest(t, root, "alpha")
	var lost string
	for _, f := range m.Files {
		if f.Path == "modules/b.nix" {
			lost = filepath.Join(root, "alpha", filepath.FromSlash(m.RemotePath(f)))
		}
	}
	if err := os.Remove(lost); err != nil {
		t.Fatal(err)
	}
	writeFleet(t, dir, map[string]string{"modules/a.nix": "{ a = 2; }\n", "modules/b.nix": "{ b = 1; }\n"}, false)
	deploy(t, root, targets(dir, "alpha"), noUsers)
	m2 := readManifest(t, root, "alpha")
	if m2.Version == m.Version {
		t.Fatal("the second deploy published nothing new")
	}
	for _, f := range m2.Files {
		if _, err := os.Stat(filepath.Join(root, "alpha", filepath.FromSlash(m2.RemotePath(f)))); err != nil {
			t.Errorf("%s: %v", f.Path, err)
		}
	}
}
