package cache_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/bento-nix/bento/cache"
	"github.com/bento-nix/bento/cache/narinfo"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
)

func runner() *nix.Runner { return &nix.Runner{Env: fixture.Env()} }

// buildHosts writes a fixture fleet and builds every host's toplevel,
// returning host name → out path.
func buildHosts(t *testing.T, hosts ...fixture.Host) map[string]string {
	t.Helper()
	dir := t.TempDir()
	if err := fixture.Write(dir, fixture.Fleet{Hosts: hosts}); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, h := range hosts {
		names = append(names, h.Name)
	}
	m, err := fixture.BuildToplevels(context.Background(), runner(), dir, names...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func host(name string, tweak func(*fixture.Host)) fixture.Host {
	h := fixture.Host{Name: name, Bento: &fixture.Bento{Enable: true}}
	if tweak != nil {
		tweak(&h)
	}
	return h
}

// closure asks Nix for the hash parts of the closure of paths.
func closure(t *testing.T, paths ...string) []string {
	t.Helper()
	out, err := runner().Output(context.Background(), "", append([]string{"path-info", "-r"}, paths...)...)
	if err != nil {
		t.Fatal(err)
	}
	var hs []string
	for _, p := range strings.Fields(string(out)) {
		h, err := narinfo.HashPart(p)
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	sort.Strings(hs)
	return hs
}

func newPool(t *testing.T) (*cache.Pool, narinfo.PublicKey) {
	t.Helper()
	dir := t.TempDir()
	pub, err := cache.GenerateKey(context.Background(), runner(), "bento-test-1", filepath.Join(dir, "key.sec"), filepath.Join(dir, "key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	return &cache.Pool{Dir: filepath.Join(dir, "pool"), Nix: runner(), SecretKeyFile: filepath.Join(dir, "key.sec")}, pub
}

// cacheContents lists a host cache: the hash parts of its narinfos and the
// names of its NAR files, checking on the way that every narinfo's NAR is
// there and that everything is a hard link into the pool.
func cacheContents(t *testing.T, pool *cache.Pool, hostDir string, key narinfo.PublicKey) (narinfos, nars []string) {
	t.Helper()
	dir := filepath.Join(hostDir, "cache")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		name := e.Name()
		switch {
		case name == "nar" || name == "nix-cache-info":
		case strings.HasSuffix(name, ".narinfo"):
			narinfos = append(narinfos, strings.TrimSuffix(name, ".narinfo"))
			data, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			in, err := narinfo.Parse(data)
			if err != nil {
				t.Fatal(err)
			}
			if err := in.Verify([]narinfo.PublicKey{key}); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			if _, err := os.Stat(filepath.Join(dir, in.URL)); err != nil {
				t.Errorf("%s names %s, which the host cache lacks: %v", name, in.URL, err)
			}
		default:
			t.Errorf("unexpected file %s in the host cache", name)
		}
		if e.Name() != "nar" {
			samePoolFile(t, pool, filepath.Join(dir, name), name)
		}
	}
	ents, err = os.ReadDir(filepath.Join(dir, "nar"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		nars = append(nars, e.Name())
		samePoolFile(t, pool, filepath.Join(dir, "nar", e.Name()), "nar/"+e.Name())
	}
	sort.Strings(narinfos)
	return narinfos, nars
}

func samePoolFile(t *testing.T, pool *cache.Pool, file, rel string) {
	t.Helper()
	a, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.Stat(filepath.Join(pool.Dir, rel))
	if err != nil {
		t.Errorf("%s is in a host cache but not in the pool: %v", rel, err)
		return
	}
	if !os.SameFile(a, b) {
		t.Errorf("%s is a copy, not a hard link of the pool's", file)
	}
}

func TestLinkHostGivesEachHostExactlyItsClosure(t *testing.T) {
	ctx := context.Background()
	tops := buildHosts(t,
		host("alpha", nil),
		host("beta", nil),
		host("gamma", func(h *fixture.Host) { h.Kernel = "gamma-only" }),
	)
	pool, key := newPool(t)
	if err := pool.Add(ctx, []string{tops["alpha"], tops["beta"], tops["gamma"]}); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	for _, h := range []string{"alpha", "beta", "gamma"} {
		st, err := pool.LinkHost(ctx, filepath.Join(root, h), []string{tops[h]})
		if err != nil {
			t.Fatal(err)
		}
		want := closure(t, tops[h])
		got, nars := cacheContents(t, pool, filepath.Join(root, h), key)
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s: cache serves %v, want its closure %v", h, got, want)
		}
		if st.Paths != len(want) || len(nars) != len(want) || st.Linked != 2*len(want)+1 || st.Bytes <= 0 {
			t.Errorf("%s: stats %+v with %d NARs, want %d paths, %d links", h, st, len(nars), len(want), 2*len(want)+1)
		}
	}
	// gamma's own kernel is invisible to alpha and beta.
	gammaKernel, _ := narinfo.HashPart(closureWith(t, tops["gamma"], "fixture-kernel-gamma-only"))
	for _, h := range []string{"alpha", "beta"} {
		if _, err := os.Stat(filepath.Join(root, h, "cache", gammaKernel+".narinfo")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s's cache holds gamma's kernel: %v", h, err)
		}
	}
	// Linking again changes nothing.
	st, err := pool.LinkHost(ctx, filepath.Join(root, "alpha"), []string{tops["alpha"]})
	if err != nil || st.Linked != 0 || st.Removed != 0 {
		t.Errorf("relinking an unchanged host: %+v, %v; want no change", st, err)
	}
}

// closureWith returns the store path in the closure of top whose name ends in suffix.
func closureWith(t *testing.T, top, suffix string) string {
	t.Helper()
	out, err := runner().Output(context.Background(), "", "path-info", "-r", top)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasSuffix(p, suffix) {
			return p
		}
	}
	t.Fatalf("no %s in the closure of %s", suffix, top)
	return ""
}

func TestRedeployRelinksAndPrunes(t *testing.T) {
	ctx := context.Background()
	gen1 := buildHosts(t, host("alpha", func(h *fixture.Host) { h.Generation = "relink-1" }))["alpha"]
	gen2 := buildHosts(t, host("alpha", func(h *fixture.Host) { h.Generation = "relink-2" }))["alpha"]
	pool, key := newPool(t)
	hostDir := filepath.Join(t.TempDir(), "alpha")
	h1, _ := narinfo.HashPart(gen1)
	h2, _ := narinfo.HashPart(gen2)

	steps := []struct {
		name      string
		add       []string
		link      []string
		prune     []string // nil: no prune
		wantHost  []string // toplevels whose closures the host cache holds exactly
		wantPool  []string // toplevel hash parts the pool must hold
		gonePool  []string // toplevel hash parts the pool must not hold
		wantLinks int
	}{
		{name: "first publication", add: []string{gen1}, link: []string{gen1}, wantHost: []string{gen1}, wantPool: []string{h1}},
		{name: "second keeps the previous", add: []string{gen2}, link: []string{gen2, gen1}, wantHost: []string{gen2, gen1}, wantPool: []string{h1, h2}},
		{name: "third drops the first", link: []string{gen2}, prune: []string{gen2}, wantHost: []string{gen2}, wantPool: []string{h2}, gonePool: []string{h1}},
		{name: "a pruned path comes back", add: []string{gen1}, link: []string{gen1}, prune: []string{gen1, gen2}, wantHost: []string{gen1}, wantPool: []string{h1, h2}},
	}
	for _, s := range steps {
		if len(s.add) > 0 {
			if err := pool.Add(ctx, s.add); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
		}
		if _, err := pool.LinkHost(ctx, hostDir, s.link); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if s.prune != nil {
			if _, err := pool.Prune(ctx, s.prune); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
		}
		got, nars := cacheContents(t, pool, hostDir, key)
		want := closure(t, s.wantHost...)
		if strings.Join(got, " ") != strings.Join(want, " ") || len(nars) != len(want) {
			t.Errorf("%s: host cache serves %v (%d NARs), want %v", s.name, got, len(nars), want)
		}
		for _, h := range s.wantPool {
			if _, err := os.Stat(filepath.Join(pool.Dir, h+".narinfo")); err != nil {
				t.Errorf("%s: pool lost %s: %v", s.name, h, err)
			}
		}
		for _, h := range s.gonePool {
			if _, err := os.Stat(filepath.Join(pool.Dir, h+".narinfo")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: pool still holds pruned %s", s.name, h)
			}
		}
		// Every NAR in the pool belongs to a narinfo in the pool.
		poolNARs, _ := filepath.Glob(filepath.Join(pool.Dir, "nar", "*"))
		infos, _ := filepath.Glob(filepath.Join(pool.Dir, "*.narinfo"))
		if len(poolNARs) != len(infos) {
			t.Errorf("%s: pool has %d NARs for %d narinfos", s.name, len(poolNARs), len(infos))
		}
	}
}

func TestAddHealsThePool(t *testing.T) {
	ctx := context.Background()
	top := buildHosts(t, host("alpha", func(h *fixture.Host) { h.Generation = "heal" }))["alpha"]
	pool, _ := newPool(t)
	if err := pool.Add(ctx, []string{top}); err != nil {
		t.Fatal(err)
	}
	h, _ := narinfo.HashPart(top)
	in := readInfo(t, filepath.Join(pool.Dir, h+".narinfo"))

	// A lost NAR: LinkHost refuses to publish a dangling narinfo and says
	// how to fix it; the next Add puts it back.
	if err := os.Remove(filepath.Join(pool.Dir, in.URL)); err != nil {
		t.Fatal(err)
	}
	_, err := pool.LinkHost(ctx, filepath.Join(t.TempDir(), "alpha"), []string{top})
	if err == nil || !strings.Contains(err.Error(), "NAR of "+top) {
		t.Errorf("LinkHost with a NAR missing from the pool: %v, want an error naming the path", err)
	}
	if err := pool.Add(ctx, []string{top}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(pool.Dir, in.URL)); err != nil {
		t.Errorf("Add did not restore the lost NAR: %v", err)
	}

	// A new key: the next Add signs every entry again.
	dir := t.TempDir()
	newKey, err := cache.GenerateKey(ctx, runner(), "bento-test-2", filepath.Join(dir, "sec"), filepath.Join(dir, "pub"))
	if err != nil {
		t.Fatal(err)
	}
	pool.SecretKeyFile = filepath.Join(dir, "sec")
	if err := pool.Add(ctx, []string{top}); err != nil {
		t.Fatal(err)
	}
	in = readInfo(t, filepath.Join(pool.Dir, h+".narinfo"))
	if err := in.Verify([]narinfo.PublicKey{newKey}); err != nil {
		t.Errorf("after a key rotation: %v", err)
	}
}

func readInfo(t *testing.T, file string) *narinfo.Info {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	in, err := narinfo.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func TestErrorsSayWhatToDo(t *testing.T) {
	ctx := context.Background()
	top := buildHosts(t, host("alpha", nil))["alpha"]
	other := buildHosts(t, host("alpha", func(h *fixture.Host) { h.Generation = "not-added" }))["alpha"]
	pool, _ := newPool(t)
	if err := pool.Add(ctx, []string{top}); err != nil {
		t.Fatal(err)
	}
	shm := ""
	var a, b syscall.Statfs_t
	if syscall.Statfs("/dev/shm", &a) == nil && syscall.Statfs(pool.Dir, &b) == nil && a.Fsid != b.Fsid {
		shm = "/dev/shm"
	}
	cases := []struct {
		name string
		run  func() error
		want string
	}{
		{"toplevel not in the pool", func() error {
			_, err := pool.LinkHost(ctx, filepath.Join(t.TempDir(), "h"), []string{other})
			return err
		}, "add the closure to the pool first"},
		{"not a store path", func() error {
			_, err := pool.LinkHost(ctx, filepath.Join(t.TempDir(), "h"), []string{"/etc/passwd"})
			return err
		}, "not a store path"},
		{"no signing key", func() error {
			p := *pool
			p.SecretKeyFile = filepath.Join(t.TempDir(), "missing")
			return p.Add(ctx, []string{top})
		}, "bento keygen"},
		{"a pool path Nix cannot take", func() error {
			p := *pool
			p.Dir = filepath.Join(t.TempDir(), "a?b")
			return p.Add(ctx, []string{top})
		}, "choose another directory"},
		{"host cache on another filesystem", func() error {
			if shm == "" {
				return errors.New("skipped: different filesystems")
			}
			d, err := os.MkdirTemp(shm, "bento-cache-test-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(d)
			_, err = pool.LinkHost(ctx, d, []string{top})
			return err
		}, "different filesystems"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.run()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an error containing %q", err, c.want)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans several lines: %q", err)
			}
		})
	}
}

// A client reading the host cache while deploys relink it never finds a
// narinfo whose NAR is missing.
func TestReaderNeverSeesADanglingNarinfo(t *testing.T) {
	ctx := context.Background()
	tops := buildHosts(t,
		host("a", func(h *fixture.Host) { h.Kernel = "race-a"; h.Initrd = "race-a" }),
		host("b", func(h *fixture.Host) { h.Kernel = "race-b"; h.Modules = "race-b" }),
	)
	pool, _ := newPool(t)
	if err := pool.Add(ctx, []string{tops["a"], tops["b"]}); err != nil {
		t.Fatal(err)
	}
	hostDir := filepath.Join(t.TempDir(), "h")
	if _, err := pool.LinkHost(ctx, hostDir, []string{tops["a"]}); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(hostDir, "cache")
	var stop atomic.Bool
	var checked atomic.Int64
	var wg sync.WaitGroup
	var failure atomic.Value
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			infos, _ := filepath.Glob(filepath.Join(dir, "*.narinfo"))
			for _, f := range infos {
				data, err := os.ReadFile(f)
				if err != nil {
					continue // removed between Glob and ReadFile: fine
				}
				in, err := narinfo.Parse(data)
				if err != nil {
					failure.Store("half-written narinfo " + f + ": " + err.Error())
					return
				}
				// The narinfo must still exist for the NAR to be required.
				if _, err := os.Stat(filepath.Join(dir, in.URL)); err != nil {
					if _, err2 := os.Stat(f); err2 == nil {
						failure.Store(f + " is there but its NAR is not: " + err.Error())
						return
					}
				}
				checked.Add(1)
			}
		}
	}()
	for i := 0; i < 200 && failure.Load() == nil; i++ {
		top := tops["a"]
		if i%2 == 0 {
			top = tops["b"]
		}
		if _, err := pool.LinkHost(ctx, hostDir, []string{top}); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if f := failure.Load(); f != nil {
		t.Fatal(f)
	}
	if checked.Load() == 0 {
		t.Fatal("the reader checked nothing")
	}
}

func TestGenerateKey(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sec, pub := filepath.Join(dir, "keys", "cache.sec"), filepath.Join(dir, "keys", "cache.pub")
	k, err := cache.GenerateKey(ctx, runner(), "fleet.example.org-1", sec, pub)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sec)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("secret key file: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	pubData, err := os.ReadFile(pub)
	if err != nil {
		t.Fatal(err)
	}
	got, err := narinfo.ParsePublicKey(string(pubData))
	if err != nil || got.String() != k.String() || got.Name != "fleet.example.org-1" {
		t.Errorf("public key file holds %v (%v), want %v", got, err, k)
	}
	// Nix itself derives the same public key from the secret.
	secret, _ := os.ReadFile(sec)
	nixPub := nixConvert(t, string(secret))
	if nixPub != k.String() {
		t.Errorf("nix key convert-secret-to-public says %q, bento wrote %q", nixPub, k)
	}
	before, _ := os.ReadFile(sec)
	cases := []struct {
		name, key, sec, pub, want string
	}{
		{"existing secret is never replaced", "x-1", sec, filepath.Join(dir, "other.pub"), "already exists"},
		{"name with a colon", "a:b", filepath.Join(dir, "s2"), filepath.Join(dir, "p2"), "key name"},
		{"empty name", "", filepath.Join(dir, "s3"), filepath.Join(dir, "p3"), "key name"},
		{"same file twice", "x-1", filepath.Join(dir, "s4"), filepath.Join(dir, "s4"), "cannot both be"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := cache.GenerateKey(ctx, runner(), c.key, c.sec, c.pub)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
	if after, _ := os.ReadFile(sec); string(after) != string(before) {
		t.Error("the secret key changed")
	}
}

func nixConvert(t *testing.T, secret string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "sec")
	if err := os.WriteFile(f, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runner().Run(context.Background(), nix.Cmd{Tool: "sh", Args: []string{"-c", "nix key convert-secret-to-public < " + f}})
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// Prune keeps what any host cache links, whichever hosts a deploy touched,
// and what keep names; it frees the rest.
func TestPruneKeepsWhatHostsLink(t *testing.T) {
	ctx := context.Background()
	tops := buildHosts(t,
		host("a", func(h *fixture.Host) { h.Kernel = "prune-a" }),
		host("b", func(h *fixture.Host) { h.Kernel = "prune-b" }),
		host("c", func(h *fixture.Host) { h.Kernel = "prune-c" }),
	)
	pool, _ := newPool(t)
	root := t.TempDir()
	if err := pool.Add(ctx, []string{tops["a"], tops["b"], tops["c"]}); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"a", "b"} {
		if _, err := pool.LinkHost(ctx, filepath.Join(root, h), []string{tops[h]}); err != nil {
			t.Fatal(err)
		}
	}
	inPool := func(p string) bool {
		h, _ := narinfo.HashPart(p)
		_, err := os.Stat(filepath.Join(pool.Dir, h+".narinfo"))
		return err == nil
	}
	steps := []struct {
		name   string
		before func()
		keep   []string
		want   map[string]bool // store path → still in the pool
	}{
		{"c is linked nowhere but kept", nil, []string{tops["c"]}, map[string]bool{
			tops["a"]: true, tops["b"]: true, tops["c"]: true,
		}},
		{"c is linked nowhere", nil, nil, map[string]bool{
			tops["a"]: true, tops["b"]: true, tops["c"]: false,
			closureWith(t, tops["c"], "kernel-prune-c"): false,
			closureWith(t, tops["a"], "initrd-1"):       true,
		}},
		{"b's chroot is gone", func() { os.RemoveAll(filepath.Join(root, "b")) }, nil, map[string]bool{
			tops["a"]: true, tops["b"]: false,
			closureWith(t, tops["b"], "kernel-prune-b"): false,
			closureWith(t, tops["a"], "kernel-prune-a"): true,
			closureWith(t, tops["a"], "initrd-1"):       true,
		}},
	}
	for _, s := range steps {
		if s.before != nil {
			s.before()
		}
		if _, err := pool.Prune(ctx, s.keep); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		for p, want := range s.want {
			if got := inPool(p); got != want {
				t.Errorf("%s: %s in the pool: %v, want %v", s.name, p, got, want)
			}
		}
		poolNARs, _ := filepath.Glob(filepath.Join(pool.Dir, "nar", "*"))
		infos, _ := filepath.Glob(filepath.Join(pool.Dir, "*.narinfo"))
		if len(poolNARs) != len(infos) {
			t.Errorf("%s: pool has %d NARs for %d narinfos", s.name, len(poolNARs), len(infos))
		}
	}
	// a's cache still serves its whole closure.
	if _, err := pool.LinkHost(ctx, filepath.Join(root, "a"), []string{tops["a"]}); err != nil {
		t.Errorf("relinking a after prunes: %v", err)
	}
}

// A deploy links each host to its new system and to the one its live
// manifest names, when the pool still has it.
func TestLinkFleetKeepsTheLiveSystem(t *testing.T) {
	ctx := context.Background()
	gen1 := buildHosts(t, host("a", func(h *fixture.Host) { h.Generation = "fleet-1" }))["a"]
	gen2 := buildHosts(t, host("a", func(h *fixture.Host) { h.Generation = "fleet-2" }))["a"]
	gen3 := buildHosts(t, host("a", func(h *fixture.Host) { h.Generation = "fleet-3" }))["a"]
	unknown := buildHosts(t, host("a", func(h *fixture.Host) { h.Generation = "fleet-never-pooled" }))["a"]
	pool, key := newPool(t)
	root := t.TempDir()
	live := func(h, top string) {
		dir := filepath.Join(root, h)
		os.MkdirAll(dir, 0o755)
		data, _ := json.Marshal(manifest.Manifest{Format: manifest.Format, Host: h, Version: "0123456789abcdef", ExpectedToplevel: top})
		if err := os.WriteFile(filepath.Join(dir, "manifest.json"), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := pool.Add(ctx, []string{gen1}); err != nil {
		t.Fatal(err)
	}
	live("published", gen1)   // live system in the pool: kept
	live("stranger", unknown) // live system never pooled: skipped
	stats, errs := pool.LinkFleet(ctx, []cache.Target{
		{Host: "published", Dir: filepath.Join(root, "published"), Toplevel: gen2},
		{Host: "stranger", Dir: filepath.Join(root, "stranger"), Toplevel: gen2},
		{Host: "new", Dir: filepath.Join(root, "new"), Toplevel: gen3},
	})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	want := map[string][]string{
		"published": closure(t, gen2, gen1),
		"stranger":  closure(t, gen2),
		"new":       closure(t, gen3),
	}
	for h, w := range want {
		got, _ := cacheContents(t, pool, filepath.Join(root, h), key)
		if strings.Join(got, " ") != strings.Join(w, " ") || stats[h].Paths != len(w) {
			t.Errorf("%s: cache serves %v (stats %+v), want %v", h, got, stats[h], w)
		}
	}
	// A signing problem fails every host, and says so.
	pool.SecretKeyFile = filepath.Join(t.TempDir(), "gone")
	_, errs = pool.LinkFleet(ctx, []cache.Target{{Host: "new", Dir: filepath.Join(root, "new"), Toplevel: gen3}})
	if err := errs["new"]; err == nil || !strings.Contains(err.Error(), "bento keygen") {
		t.Errorf("LinkFleet without a key: %v", err)
	}
}
