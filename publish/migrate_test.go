package publish_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/format1"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/publish"
)

// A chroot written by the format-1 publisher is migrated in place: the
// first deploy publishes format 2 and keeps config/ (and the old secrets)
// for the retention period, since a host may still be reading the
// format-1 manifest; once that is over, config/ goes.
func TestMigrateFormat1Chroot(t *testing.T) {
	files := map[string]string{"lib/a.nix": "1\n", "lib/b.nix": "b\n"}
	dir := newFleet(t, files, true)
	root := filepath.Join(t.TempDir(), "chroot")
	secret := func(content string) *publish.Extra {
		return &publish.Extra{
			Files: []manifest.File{{Path: "k", Mode: 0o400, Size: int64(len(content)), SHA256: sha([]byte(content))}},
			Write: func(_ context.Context, d string) error {
				return os.WriteFile(filepath.Join(d, "k"), []byte(content), 0o400)
			},
		}
	}
	old := func(content string) {
		ts := targets(dir, "alpha", "beta")
		ts[0].Extra = secret(content)
		p, err := format1.Open(context.Background(), format1.Options{Root: root, Jobs: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		mustOK(t, p.Publish(context.Background(), ts), publish.StatusPublished)
	}
	old("s1")
	files["lib/a.nix"] = "2\n"
	writeFleet(t, dir, files, true)
	old("s2")
	f1 := readManifest(t, root, "alpha")
	if f1.Format != 1 {
		t.Fatalf("format1 wrote format %d", f1.Format)
	}
	f1Dir := filepath.Join(root, "alpha", manifest.ConfigPath(f1.Version))

	files["lib/a.nix"] = "3\n"
	writeFleet(t, dir, files, true)
	clk := newClock()
	ts := targets(dir, "alpha", "beta")
	ts[0].Extra = secret("s3")
	rs := deploy(t, root, ts, clk.opt)
	mustOK(t, rs, publish.StatusPublished)
	for _, host := range []string{"alpha", "beta"} {
		verify(t, root, host)
	}
	// A host that read the format-1 manifest a moment ago still finds its files.
	for _, f := range f1.Files {
		if data, err := os.ReadFile(filepath.Join(f1Dir, f.Path)); err != nil || sha(data) != f.SHA256 {
			t.Errorf("format-1 %s gone during the retention period: %v", f.Path, err)
		}
	}
	if got := mustRead(t, filepath.Join(root, "alpha/secrets", f1.Version, "k")); got != "s2" {
		t.Errorf("the format-1 version's secret: %q", got)
	}

	// Past the retention period, an unchanged deploy finishes the move.
	clk.Advance(publish.DefaultRetention + time.Minute)
	rs = deploy(t, root, ts, clk.opt)
	mustOK(t, rs, publish.StatusUnchanged)
	for _, host := range []string{"alpha", "beta"} {
		m := verifyExact(t, root, host)
		if _, err := os.Lstat(filepath.Join(root, host, manifest.ConfigDir)); !os.IsNotExist(err) {
			t.Errorf("%s: config/ still there: %v", host, err)
		}
		if host == "alpha" {
			entries, _ := os.ReadDir(filepath.Join(root, host, manifest.SecretsDir))
			if len(entries) != 1 || entries[0].Name() != m.Version {
				t.Errorf("secrets/ holds %v, want only %s", entries, m.Version)
			}
		}
	}
	for _, p := range listFiles(t, filepath.Join(root, publish.StateDir)) {
		if strings.Contains(p, ".tmp-") {
			t.Errorf("left in the state directory: %s", p)
		}
	}
	checkPool(t, root)
}

// A lost retention record keeps everything in the chroot for a whole
// period: nobody knows what a host may be reading.
func TestLostRecordKeepsEverything(t *testing.T) {
	files := map[string]string{"lib/a.nix": "1\n"}
	dir := newFleet(t, files, true)
	root := filepath.Join(t.TempDir(), "chroot")
	clk := newClock()
	mustOK(t, deploy(t, root, targets(dir, "alpha"), clk.opt), publish.StatusPublished)
	m1 := readManifest(t, root, "alpha")
	files["lib/a.nix"] = "2\n"
	writeFleet(t, dir, files, true)
	mustOK(t, deploy(t, root, targets(dir, "alpha"), clk.opt), publish.StatusPublished)
	os.WriteFile(filepath.Join(root, publish.StateDir, "alpha/history.json"), []byte("{garbage"), 0o600)

	clk.Advance(2 * publish.DefaultRetention)
	files["lib/a.nix"] = "3\n"
	writeFleet(t, dir, files, true)
	rs := deploy(t, root, targets(dir, "alpha"), clk.opt)
	mustOK(t, rs, publish.StatusPublished)
	if !strings.Contains(strings.Join(rs[0].Notes, "\n"), "retention record") || rs[0].Removed != 0 {
		t.Errorf("notes %q, %d removed", rs[0].Notes, rs[0].Removed)
	}
	a1 := fileOf(t, m1, "lib/a.nix")
	if _, err := os.Stat(objectFile(root, "alpha", a1)); err != nil {
		t.Errorf("an object went although the record was lost: %v", err)
	}
	// One period later the record is whole again and the old objects go.
	clk.Advance(publish.DefaultRetention + time.Minute)
	rs = deploy(t, root, targets(dir, "alpha"), clk.opt)
	mustOK(t, rs, publish.StatusUnchanged)
	verifyExact(t, root, "alpha")
}
