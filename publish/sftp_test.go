package publish_test

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pkg/sftp"

	"github.com/bento-nix/bento/internal/sshdtest"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/publish"
)

// A host in fetch mode evaluates nothing, so it receives nothing of the
// flake: listed over SFTP as that host, its chroot holds its manifest
// (with no file in it) and no content of the fleet's configuration. The
// build-mode host beside it gets the tree.
func TestFetchModeChrootHoldsNoTree(t *testing.T) {
	srv := sshdtest.Start(t, sshdtest.Options{})
	ca, cb := srv.AddHost(t, "alpha"), srv.AddHost(t, "beta")
	dir := newFleet(t, map[string]string{"hosts/alpha/secret-plan.nix": "{ alpha = 1; }\n", "hosts/beta/own.nix": "{ }\n"}, true)
	ts := targets(dir, "alpha", "beta")
	ts[0].Host.Options.User = ca.User
	ts[1].Host.Options.User, ts[1].Host.Options.Mode = cb.User, "fetch"
	rs := deploy(t, srv.Root, ts)
	mustOK(t, rs, publish.StatusPublished)
	if rs[1].Files != 0 || rs[1].Copied+rs[1].Shared+rs[1].Linked != 0 {
		t.Errorf("beta: %+v", rs[1])
	}
	tree := readManifest(t, srv.Root, "alpha")
	flake := sumsOf(tree)
	if len(flake) < 3 {
		t.Fatalf("alpha's manifest names %d contents", len(flake))
	}

	sc := srv.SFTP(t, cb)
	seen := 0
	w := sc.Walk("/")
	for w.Step() {
		if err := w.Err(); err != nil {
			t.Fatal(err)
		}
		if w.Stat().IsDir() {
			continue
		}
		seen++
		data := readSFTP(t, sc, w.Path())
		if flake[sha(data)] {
			t.Errorf("beta (fetch mode) can read %s, a file of the flake", w.Path())
		}
		if w.Path() != "/manifest.json" {
			t.Errorf("beta's chroot holds %s", w.Path())
		}
	}
	if seen != 1 {
		t.Errorf("beta's chroot holds %d files, want its manifest only", seen)
	}
	m, err := manifest.Parse(readSFTP(t, sc, "/manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Format != 2 || len(m.Files) != 0 || m.Version != tree.Version || m.ExpectedToplevel == "" {
		t.Errorf("beta's manifest: format %d, %d files, version %s (alpha %s), expected %q", m.Format, len(m.Files), m.Version, tree.Version, m.ExpectedToplevel)
	}
	// The pool and the retention records are beside the chroots, out of reach.
	for _, p := range []string{"/../" + publish.PoolDir, "/../" + publish.StateDir, "/../alpha"} {
		if _, err := sc.Stat(p); err == nil {
			if entries, err := sc.ReadDir(p); err == nil && len(entries) > 0 {
				t.Errorf("beta can list %s over SFTP", p)
			}
		}
	}
	// The build-mode host reads its whole tree through its own chroot.
	sa := srv.SFTP(t, ca)
	for _, f := range tree.Files {
		if data := readSFTP(t, sa, "/"+tree.RemotePath(f)); sha(data) != f.SHA256 {
			t.Errorf("alpha: %s does not match", f.Path)
		}
	}
}

// SFTP readers, as the host's own user through a real sshd, read the
// manifest and then every object it names while publications follow each
// other; one of them waits, after reading the manifest, until two more
// publications went live. None finds an object missing or different.
// With no retention period, the same readers must see torn reads: the
// test can fail. BENTO_TORN_ROUNDS sets the rounds of the main run.
func TestTornReadsOverSFTP(t *testing.T) {
	rounds := 250
	if s := os.Getenv("BENTO_TORN_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	srv := sshdtest.Start(t, sshdtest.Options{})
	c := srv.AddHost(t, "alpha")
	t.Run("retention", func(t *testing.T) {
		st := tornRun(t, srv, c, publish.DefaultRetention, rounds, 30)
		t.Logf("%d publications, %d rounds (%d by the pausing reader; %d more outlasted the retention period), %d objects read, %d removed by retention: %d missing, %d mismatched",
			st.pubs, st.rounds, st.paused, st.expired, st.objects, st.removed, st.missing, st.mismatched)
		if st.missing+st.mismatched > 0 {
			t.Errorf("%d objects missing, %d mismatched", st.missing, st.mismatched)
		}
		if st.removed == 0 || st.paused == 0 {
			t.Errorf("the run removed %d objects, the pausing reader made %d rounds: nothing was exercised", st.removed, st.paused)
		}
	})
	t.Run("no retention", func(t *testing.T) {
		st := tornRun(t, srv, c, time.Nanosecond, 20, 10)
		if st.missing == 0 {
			t.Errorf("with no retention period the pausing reader found every object in %d rounds: the test cannot fail", st.paused)
		}
	})
}

type tornStats struct {
	pubs, rounds, paused, objects, removed, missing, mismatched int64
	// expired rounds held their manifest past the retention period.
	expired int64
}

// perPeriod is how many publications the torn-read test makes per
// retention period of its clock.
const perPeriod = 8

// publications counts the publications that went live, for readers to
// wait on (no sleeping).
type publications struct {
	mu sync.Mutex
	n  int
	ch chan struct{}
}

func (p *publications) done() {
	p.mu.Lock()
	p.n++
	close(p.ch)
	p.ch = make(chan struct{})
	p.mu.Unlock()
}

func (p *publications) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// wait blocks until n publications went live; false when stopped first.
func (p *publications) wait(n int, stop <-chan struct{}) bool {
	for {
		p.mu.Lock()
		got, ch := p.n, p.ch
		p.mu.Unlock()
		if got >= n {
			return true
		}
		select {
		case <-ch:
		case <-stop:
			return false
		}
	}
}

func tornRun(t *testing.T, srv *sshdtest.Server, c *sshdtest.Client, retention time.Duration, minRounds, minPubs int) tornStats {
	content := func(step int) map[string]string {
		m := map[string]string{}
		for i := 0; i < 24; i++ {
			gen := 0
			if i == step%24 || i == (step+7)%24 {
				gen = step
			}
			m[fmt.Sprintf("mod/f%02d.nix", i)] = fmt.Sprintf("# file %d generation %d\n%s", i, gen, pad(i))
		}
		return m
	}
	dir := newFleet(t, content(0), false)
	ts := targets(dir, "alpha")
	ts[0].Source.Plain = true
	ts[0].Host.Options.User = c.User
	clk := newClock()
	opts := func(o *publish.Options) { o.Now, o.Retention = clk.Now, retention }
	mustOK(t, deploy(t, srv.Root, ts, opts), publish.StatusPublished)

	var st tornStats
	pubs := &publications{ch: make(chan struct{})}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var rounds atomic.Int64
	for r := 0; r < 3; r++ {
		sc := srv.SFTP(t, c)
		pausing := r == 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				start := pubs.count()
				data, err := readAll(sc, "/manifest.json")
				if err != nil {
					atomic.AddInt64(&st.missing, 1)
					t.Errorf("manifest: %v", err)
					continue
				}
				m, err := manifest.Parse(data)
				if err != nil {
					t.Errorf("torn manifest: %v", err)
					atomic.AddInt64(&st.mismatched, 1)
					continue
				}
				if pausing && !pubs.wait(pubs.count()+2, stop) {
					return
				}
				var missing, mismatched int64
				for _, f := range m.Files {
					b, err := readAll(sc, "/"+m.RemotePath(f))
					atomic.AddInt64(&st.objects, 1)
					switch {
					case err != nil:
						missing++
					case sha(b) != f.SHA256:
						mismatched++
					}
				}
				// The manifest read was live until publication start+1 at
				// the earliest; its objects may go during publication
				// start+1+perPeriod, which may be under way (not counted
				// yet) once start+perPeriod are done. A round that lasted
				// that long held its manifest past the retention period
				// (in the test's clock): like a real host then, it starts
				// again.
				if pubs.count() >= start+perPeriod {
					atomic.AddInt64(&st.expired, 1)
					continue
				}
				atomic.AddInt64(&st.missing, missing)
				atomic.AddInt64(&st.mismatched, mismatched)
				rounds.Add(1)
				if pausing {
					atomic.AddInt64(&st.paused, 1)
				}
			}
		}()
	}
	step := 0
	for step < minPubs || int(rounds.Load()) < minRounds {
		step++
		writeFleet(t, dir, content(step), false)
		clk.Advance(publish.DefaultRetention / perPeriod)
		rs := deploy(t, srv.Root, ts, opts)
		if !rs[0].OK() {
			close(stop)
			wg.Wait()
			t.Fatalf("publication %d: %v", step, rs[0].Err)
		}
		st.removed += int64(rs[0].Removed)
		pubs.done()
		if step > 20000 {
			break
		}
	}
	close(stop)
	wg.Wait()
	st.pubs, st.rounds = int64(step), rounds.Load()
	return st
}

func readAll(sc *sftp.Client, p string) ([]byte, error) {
	f, err := sc.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, manifest.MaxSize))
}

func readSFTP(t *testing.T, sc *sftp.Client, p string) []byte {
	t.Helper()
	data, err := readAll(sc, p)
	if err != nil {
		t.Fatalf("sftp %s: %v", filepath.ToSlash(p), err)
	}
	return data
}
