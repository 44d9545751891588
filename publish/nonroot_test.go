package publish_test

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bento-nix/bento/publish"
)

// A local try-out deploys as a normal user into a directory of theirs:
// everything then belongs to that user, no SFTP user is looked up, and
// asking for users (which needs chown) or for an unwritable root fails
// clearly. The test re-runs itself as nobody.
func TestNotRoot(t *testing.T) {
	if dir := os.Getenv("BENTO_TEST_NOT_ROOT"); dir != "" {
		notRootChild(t, dir)
		return
	}
	requireRoot(t)
	uid, gid := nobody(t)
	base := t.TempDir()
	// Go makes test directories 0700: let nobody in.
	os.Chmod(base, 0o755)
	os.Chmod(filepath.Dir(base), 0o755)
	fleetDir := filepath.Join(base, "fleet")
	writeFleet(t, fleetDir, nil, false)
	mine := filepath.Join(base, "mine")
	os.Mkdir(mine, 0o755)
	os.Chown(mine, uid, gid)
	os.Mkdir(filepath.Join(base, "roots"), 0o755)
	bin := filepath.Join(base, "publish.test")
	copyExec(t, os.Args[0], bin)

	cmd := exec.Command(bin, "-test.run=^TestNotRoot$", "-test.v")
	cmd.Env = append(os.Environ(), "BENTO_TEST_NOT_ROOT="+base)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("as nobody: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: TestNotRoot") {
		t.Fatalf("the test did not run as nobody:\n%s", out)
	}
	for _, p := range []string{"chroot/alpha", "chroot/alpha/objects", "chroot/alpha/reports", "chroot/alpha/manifest.json"} {
		if u, _, _ := owner(t, filepath.Join(mine, p)); u != uid {
			t.Errorf("%s belongs to uid %d, want the deploying user %d", p, u, uid)
		}
	}
	verifyExact(t, filepath.Join(mine, "chroot"), "alpha")
}

func notRootChild(t *testing.T, base string) {
	ctx := context.Background()
	root := filepath.Join(base, "mine/chroot")
	if _, err := publish.Open(ctx, publish.Options{Root: root, Users: true}); err == nil || !strings.Contains(err.Error(), "needs root") {
		t.Errorf("users without root: %v", err)
	}
	if _, err := publish.CheckRoot(filepath.Join(base, "roots"), true); err == nil || !strings.Contains(err.Error(), "is not writable by you") {
		t.Errorf("root-owned chroot root: %v", err)
	}
	if _, err := publish.CheckRoot(filepath.Join(base, "roots/sub"), true); err == nil || !strings.Contains(err.Error(), "cannot create it") {
		t.Errorf("chroot root under a root-owned directory: %v", err)
	}
	ts := targets(filepath.Join(base, "fleet"), "alpha")
	ts[0].Source.Plain = true
	mustOK(t, deploy(t, root, ts, func(o *publish.Options) { o.Users = false }), publish.StatusPublished)
	mustOK(t, deploy(t, root, ts, func(o *publish.Options) { o.Users = false }), publish.StatusUnchanged)
}

func copyExec(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
