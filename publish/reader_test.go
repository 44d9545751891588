package publish_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/publish"
)

// Clients read while deploys run. Whatever the moment, a reader must see a
// whole manifest, and every file it names with the announced hash. The
// publication clock moves half a retention period per publication, so
// objects do leave the chroot: a version stays readable for two
// publications after it stopped being live (a reader older than that is
// past the retention period and must fetch the new manifest again).
func TestConcurrentReadersNeverSeeTornState(t *testing.T) {
	const (
		files      = 24
		minSteps   = 30
		minReads   = 3000
		numReaders = 4
	)
	content := func(step int) map[string]string {
		m := map[string]string{"step.txt": fmt.Sprint(step, "\n")}
		for i := 0; i < files; i++ {
			// Each step changes two files and keeps the others, so new
			// versions mix copies and hard links.
			gen := 0
			if i == step%files || i == (step+7)%files {
				gen = step
			}
			m[fmt.Sprintf("mod/f%02d.nix", i)] = fmt.Sprintf("# file %d generation %d\n%s", i, gen, pad(i))
		}
		return m
	}
	dir := newFleet(t, content(0), false)
	root := filepath.Join(t.TempDir(), "chroot")
	ts := targets(dir, "alpha")
	ts[0].Source.Plain = true

	// order maps each version to its publication step.
	var mu sync.Mutex
	order := map[string]int{}
	versionOf := func() string {
		tr, err := publish.ReadTree(context.Background(), ts[0].Source, publish.TreeOptions{})
		if err != nil {
			t.Error(err)
			return ""
		}
		return publish.Version(tr.Manifest(), nil)
	}
	order[versionOf()] = 0
	clk := newClock()
	mustOK(t, deploy(t, root, ts, clk.opt), publish.StatusPublished)

	var reads, retries, torn atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for r := 0; r < numReaders; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				problem, v := readOnce(root, "alpha")
				reads.Add(1)
				if problem == "" {
					continue
				}
				// Is the version it read already two publications old?
				now, _ := os.ReadFile(filepath.Join(root, "alpha/manifest.json"))
				m, err := manifest.Parse(now)
				mu.Lock()
				age := -1
				if err == nil {
					age = order[m.Version] - order[v]
				}
				mu.Unlock()
				if v != "" && age >= 3 {
					retries.Add(1)
					continue
				}
				if torn.Add(1) <= 5 {
					t.Errorf("torn read of version %q (now %d publications old): %s", v, age, problem)
				}
			}
		}()
	}

	step, removed := 0, 0
	for step < minSteps || reads.Load() < minReads {
		step++
		writeFleet(t, dir, content(step), false)
		v := versionOf()
		mu.Lock()
		order[v] = step
		mu.Unlock()
		clk.Advance(publish.DefaultRetention / 2)
		rs := deploy(t, root, ts, clk.opt)
		if !rs[0].OK() || rs[0].Version != v {
			close(stop)
			wg.Wait()
			t.Fatalf("step %d: %s %v (version %s, want %s)", step, rs[0].Status, rs[0].Err, rs[0].Version, v)
		}
		removed += rs[0].Removed
		if step > 1000 {
			break
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d publications, %d reads, %d re-reads after pruning", step, reads.Load(), retries.Load())
	if removed == 0 {
		t.Error("no object ever left the chroot: the test did not exercise removals")
	}
	if reads.Load() < minReads {
		t.Errorf("only %d reads", reads.Load())
	}
	if torn.Load() > 0 {
		t.Errorf("%d torn reads", torn.Load())
	}
	verify(t, root, "alpha")
}

// readOnce reads the manifest and every file it names, as a client does.
// It returns what was wrong ("" if nothing) and the version read.
func readOnce(root, host string) (problem, version string) {
	data, err := os.ReadFile(filepath.Join(root, host, "manifest.json"))
	if err != nil {
		return "manifest: " + err.Error(), ""
	}
	m, err := manifest.Parse(data)
	if err != nil {
		return "manifest: " + err.Error(), ""
	}
	for _, f := range m.Files {
		b, err := os.ReadFile(filepath.Join(root, host, filepath.FromSlash(m.RemotePath(f))))
		if err != nil {
			return err.Error(), m.Version
		}
		if int64(len(b)) != f.Size || sha(b) != f.SHA256 {
			return f.Path + ": content does not match the manifest", m.Version
		}
	}
	return "", m.Version
}

func pad(i int) string {
	b := make([]byte, 200+i*37)
	for j := range b {
		b[j] = 'a' + byte((i+j)%26)
	}
	return string(b) + "\n"
}
