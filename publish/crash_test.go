package publish_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/publish"
)

// A deploy killed with SIGKILL at any step leaves every host with a valid
// manifest (the old or the new one) whose every object is in its chroot
// with the announced content; the next deploy converges. The test re-runs
// itself as a child that kills itself at the Nth step of a publication,
// for N = 1, 2, … until a child gets through.
func TestKillAtEveryStep(t *testing.T) {
	if spec := os.Getenv("BENTO_TEST_KILL"); spec != "" {
		killChild(t, spec)
		return
	}
	// Three versions: v0 leaves the retention window during the killed
	// deploy (so removals are among the steps killed), v1 is the live one,
	// v2 the one being published.
	content := func(gen int) map[string]string {
		return map[string]string{
			"lib/shared.nix": "shared\n",
			"lib/gen.nix":    fmt.Sprintf("gen %d\n", gen),
			"lib/other.nix":  fmt.Sprintf("other %d\n", gen/2),
		}
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(d time.Duration) func(*publish.Options) {
		return func(o *publish.Options) { o.Now = func() time.Time { return t0.Add(d) } }
	}
	plain := func(ts []publish.Target) []publish.Target {
		for i := range ts {
			ts[i].Source.Plain = true
		}
		return ts
	}
	killed := 0
	for n := 1; ; n++ {
		if n > 100 {
			t.Fatal("the child never got through")
		}
		// After the kill, the next deploy publishes the new content again,
		// or the old one (the operator reverted): either way it converges,
		// and objects a killed deploy linked but no manifest named go.
		var childErr error
		for _, next := range []string{"new", "old"} {
			base := t.TempDir()
			dir := filepath.Join(base, "fleet")
			root := filepath.Join(base, "chroot")
			writeFleet(t, dir, content(0), false)
			mustOK(t, deploy(t, root, plain(targets(dir, "alpha", "beta")), at(0)), publish.StatusPublished)
			writeFleet(t, dir, content(1), false)
			mustOK(t, deploy(t, root, plain(targets(dir, "alpha", "beta")), at(10*time.Minute)), publish.StatusPublished)
			old := map[string]*manifest.Manifest{"alpha": readManifest(t, root, "alpha"), "beta": readManifest(t, root, "beta")}
			writeFleet(t, dir, content(2), false)

			cmd := exec.Command(os.Args[0], "-test.run=^TestKillAtEveryStep$")
			cmd.Env = append(os.Environ(), fmt.Sprintf("BENTO_TEST_KILL=%d|%d|%s|%s", n, t0.Add(2*time.Hour).UnixNano(), dir, root))
			out, err := cmd.CombinedOutput()
			childErr = err
			var exit *exec.ExitError
			switch {
			case err == nil:
			case asExit(err, &exit) && exit.Sys().(syscall.WaitStatus).Signaled() && exit.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL:
				if next == "new" {
					killed++
				}
			default:
				t.Fatalf("step %d: the child failed: %v\n%s", n, err, out)
			}
			step := strings.TrimSpace(string(out))
			// What a host sees after the kill: its old or its new
			// manifest, every object of it present.
			seen := map[string]*manifest.Manifest{}
			for _, host := range []string{"alpha", "beta"} {
				seen[host] = verify(t, root, host)
			}
			if next == "old" {
				writeFleet(t, dir, content(1), false)
			}
			rs := deploy(t, root, plain(targets(dir, "alpha", "beta")), at(2*time.Hour+time.Minute))
			for _, r := range rs {
				if !r.OK() {
					t.Fatalf("kill %d (%s), then the %s content: the next deploy: %v", n, step, next, r.Err)
				}
			}
			for _, host := range []string{"alpha", "beta"} {
				m := verify(t, root, host)
				if next == "new" {
					if v := seen[host].Version; v != old[host].Version && v != m.Version {
						t.Errorf("kill %d (%s): %s served version %s, neither the old %s nor the new %s", n, step, host, v, old[host].Version, m.Version)
					}
				}
				// What may stay: the live manifest's objects, and those of
				// every manifest live since the retention window began.
				allowed := sumsOf(m)
				for _, live := range []*manifest.Manifest{old[host], seen[host]} {
					for s := range sumsOf(live) {
						allowed[s] = true
					}
				}
				for _, p := range listFiles(t, filepath.Join(root, host, manifest.ObjectsDir)) {
					if !allowed[strings.Replace(p, "/", "", 1)] {
						t.Errorf("kill %d (%s), then the %s content: %s keeps %s, which no manifest of the window names", n, step, next, host, p)
					}
				}
			}
			t.Logf("kill %d (%s), then %s", n, step, next)
			checkPool(t, root)
		}
		if childErr == nil {
			break
		}
	}
	if killed < 10 {
		t.Errorf("only %d kill points: the hooks are not where the steps are", killed)
	}
	t.Logf("killed at %d points, converged every time", killed)
}

func asExit(err error, exit **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	*exit = e
	return ok
}

// checkPool: after a deploy that went well, the pool holds no temporary
// file and no object that no chroot links, and no marker says a deploy
// did not finish.
func checkPool(t *testing.T, root string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(root, publish.StateDir, "unfinished")); !os.IsNotExist(err) {
		data, _ := os.ReadFile(filepath.Join(root, publish.StateDir, "unfinished"))
		t.Errorf("the unfinished-deploy marker is there after a deploy that finished: %v %q", err, data)
	}
	pool := filepath.Join(root, publish.PoolDir)
	for _, p := range listFiles(t, pool) {
		fi, err := os.Lstat(filepath.Join(pool, p))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(p, ".tmp-") || fi.Sys().(*syscall.Stat_t).Nlink < 2 {
			t.Errorf("the pool keeps %s (%d links)", p, fi.Sys().(*syscall.Stat_t).Nlink)
		}
	}
}

// killChild publishes and SIGKILLs itself at the Nth step, printing it.
func killChild(t *testing.T, spec string) {
	parts := strings.SplitN(spec, "|", 4)
	n, _ := strconv.Atoi(parts[0])
	nanos, _ := strconv.ParseInt(parts[1], 10, 64)
	dir, root := parts[2], parts[3]
	var calls atomic.Int64
	p, err := publish.Open(context.Background(), publish.Options{
		Root: root, Jobs: 2,
		Now: func() time.Time { return time.Unix(0, nanos) },
		Hook: func(step publish.Step, host string) {
			if calls.Add(1) == int64(n) {
				fmt.Printf("%s %s\n", step, host)
				os.Stdout.Sync()
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := targets(dir, "alpha", "beta")
	for i := range ts {
		ts[i].Source.Plain = true
	}
	for _, r := range p.Publish(context.Background(), ts) {
		if !r.OK() {
			t.Fatal(r.Err)
		}
	}
	p.Close()
}
