package publish_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/publish"
)

// reports/ is the host's: no deploy empties it or takes it back, whether
// nothing changed, a new version went live (pruning an old one), or only
// the manifest was rewritten. A reports/ left to root (an earlier
// --no-user-check deploy) is given to the host's user, its content kept.
func TestReportsSurviveDeploys(t *testing.T) {
	requireRoot(t)
	nuid, ngid := nobody(t)
	files := map[string]string{"lib/a.nix": "1\n"}
	dir := newFleet(t, files, true)
	root := filepath.Join(t.TempDir(), "chroot")
	clk := newClock()
	noUsers := func(o *publish.Options) { o.Users = false }
	mustOK(t, deploy(t, root, targets(dir, "alpha"), noUsers, clk.opt), publish.StatusPublished)
	rep := filepath.Join(root, "alpha/reports")
	if uid, _, _ := owner(t, rep); uid != 0 {
		t.Fatalf("reports/ of a deploy without user check belongs to uid %d", uid)
	}
	// What a host uploads: its status, its logs, and a temp name of its own.
	writeFile(t, filepath.Join(rep, "status.json"), `{"format":1}`, 0o644)
	writeFile(t, filepath.Join(rep, "logs/v1-1.log"), "log 1\n", 0o644)
	writeFile(t, filepath.Join(rep, ".status.json.tmp-x"), "partial", 0o600)
	want := listFiles(t, rep)

	check := func(step string) {
		t.Helper()
		if got := listFiles(t, rep); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s: reports/ holds %v, want %v", step, got, want)
		}
		if got := mustRead(t, filepath.Join(rep, "logs/v1-1.log")); got != "log 1\n" {
			t.Errorf("%s: a log changed: %q", step, got)
		}
		if uid, gid, perm := owner(t, rep); uid != nuid || gid != ngid || perm != 0o755 {
			t.Errorf("%s: reports/ is %d:%d %04o, want the SFTP user's %d:%d 0755", step, uid, gid, perm, nuid, ngid)
		}
	}
	// Unchanged content, now with the user check: only the owner changes.
	mustOK(t, deploy(t, root, targets(dir, "alpha"), clk.opt), publish.StatusUnchanged)
	check("unchanged redeploy")
	// Two new versions, the second after the retention period: it prunes
	// the first.
	for i, c := range []string{"2\n", "3\n"} {
		files["lib/a.nix"] = c
		writeFleet(t, dir, files, true)
		clk.Advance(2 * publish.DefaultRetention)
		rs := deploy(t, root, targets(dir, "alpha"), clk.opt)
		mustOK(t, rs, publish.StatusPublished)
		if i == 1 && len(rs[0].Pruned) != 1 {
			t.Errorf("pruned %v, want the first version", rs[0].Pruned)
		}
		check("new version " + strings.TrimSpace(c))
	}
	// Same files, new expected system: the manifest only.
	ts := targets(dir, "alpha")
	ts[0].ExpectedToplevel += "-2"
	mustOK(t, deploy(t, root, ts, clk.opt), publish.StatusUpdated)
	check("manifest-only update")
	if _, err := os.Stat(filepath.Join(root, "alpha/manifest.json")); err != nil {
		t.Fatal(err)
	}
}
