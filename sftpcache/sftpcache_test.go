package sftpcache_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/cache"
	"github.com/bento-nix/bento/cache/narinfo"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/internal/sshdtest"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
	"github.com/bento-nix/bento/sftpcache"
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

// server is a bento server as deploy leaves it: an sshd with one chroot per
// host, a signed pool, and each host's cache linked into its chroot.
type server struct {
	sshd *sshdtest.Server
	pool *cache.Pool
	key  narinfo.PublicKey
}

func newServer(t *testing.T) *server {
	t.Helper()
	srv := sshdtest.Start(t, sshdtest.Options{})
	// Beside the chroot root: same filesystem (hard links), outside every chroot.
	base := filepath.Dir(srv.Root)
	key, err := cache.GenerateKey(context.Background(), runner(), "bento-test-1", filepath.Join(base, "cache.sec"), filepath.Join(base, "cache.pub"))
	if err != nil {
		t.Fatal(err)
	}
	return &server{
		sshd: srv,
		pool: &cache.Pool{Dir: filepath.Join(base, "pool"), Nix: runner(), SecretKeyFile: filepath.Join(base, "cache.sec")},
		key:  key,
	}
}

// publish adds the toplevels to the pool and links the host's cache.
func (s *server) publish(t *testing.T, hostName string, toplevels ...string) {
	t.Helper()
	ctx := context.Background()
	if err := s.pool.Add(ctx, toplevels); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.LinkHost(ctx, filepath.Join(s.sshd.Root, hostName), toplevels); err != nil {
		t.Fatal(err)
	}
}

// realise runs what the agent runs in fetch mode, against its own store:
// the server is an extra substituter, the fleet's key an extra trusted key,
// and misses are not cached (agent.Config.nixOptions).
// Nix's narinfo disk cache is the client's too: keyed by URL, a hit left by
// another test on the same port would hide what this one serves.
func realise(ctx context.Context, srv *sftpcache.Server, key narinfo.PublicKey, store, path string) error {
	args := []string{"--store", store, "--option", "require-sigs", "true", "--realise", path,
		"--option", "narinfo-cache-negative-ttl", "0",
		"--option", "extra-substituters", srv.URL,
		"--option", "extra-trusted-public-keys", key.String()}
	_, err := runner().Run(ctx, nix.Cmd{Tool: "nix-store", Args: args, ExtraEnv: []string{"XDG_CACHE_HOME=" + filepath.Join(store, ".cache")}})
	return err
}

func valid(t *testing.T, store, path string) bool {
	t.Helper()
	_, err := runner().Output(context.Background(), "", "path-info", "--store", store, path)
	return err == nil
}

func narFile(t *testing.T, cacheDir, storePath string) os.FileInfo {
	t.Helper()
	h, _ := narinfo.HashPart(storePath)
	data, err := os.ReadFile(filepath.Join(cacheDir, h+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	in, err := narinfo.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(cacheDir, in.URL))
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

func closure(t *testing.T, path string) []string {
	t.Helper()
	out, err := runner().Output(context.Background(), "", "path-info", "-r", path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(out))
}

// A host with an empty store gets its whole closure through its chroot;
// after a publication that changed one path it downloads only that NAR.
func TestFetchThroughTheChroot(t *testing.T) {
	ctx := context.Background()
	gen1 := buildHosts(t, host("alpha", func(h *fixture.Host) { h.Generation = "sftp-1" }))["alpha"]
	gen2 := buildHosts(t, host("alpha", func(h *fixture.Host) { h.Generation = "sftp-2" }))["alpha"]
	s := newServer(t)
	alpha := s.sshd.AddHost(t, "alpha")
	s.publish(t, "alpha", gen1)
	store := filepath.Join(t.TempDir(), "client")
	cacheDir := filepath.Join(s.sshd.Root, "alpha", "cache")

	tick := func(top string) sftpcache.Stats {
		t.Helper()
		srv, err := sftpcache.Serve(ctx, s.sshd.SFTP(t, alpha), "cache", sftpcache.Options{PublicKeys: []narinfo.PublicKey{s.key}})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		// Nothing is mirrored in advance: the server is read only when
		// Nix asks.
		if st := srv.Stats(); st != (sftpcache.Stats{}) {
			t.Errorf("read %+v from the server before Nix asked for anything", st)
		}
		if err := realise(ctx, srv, s.key, store, top); err != nil {
			t.Fatalf("realising %s through the chroot: %v", top, srv.Explain(err))
		}
		if ps := srv.Problems(); len(ps) > 0 {
			t.Errorf("problems with an intact cache: %v", ps)
		}
		return srv.Stats()
	}

	first := tick(gen1)
	all := closure(t, gen1)
	var want int64
	for _, p := range all {
		if !valid(t, store, p) {
			t.Errorf("%s is not in the client's store", p)
		}
		want += narFile(t, cacheDir, p).Size()
	}
	if first.NARs != len(all) || first.NARBytes != want || first.Bytes <= want {
		t.Errorf("first update: %+v; want %d NARs of %d bytes in all and narinfos on top", first, len(all), want)
	}

	s.publish(t, "alpha", gen2, gen1)
	second := tick(gen2)
	size := narFile(t, cacheDir, gen2).Size()
	if second.NARs != 1 || second.NARBytes != size {
		t.Errorf("one changed path: %+v; want exactly its NAR (%d bytes)", second, size)
	}
	// The cache now serves both systems; Nix asked about what the host
	// lacks, not about every path the cache holds.
	infos, _ := filepath.Glob(filepath.Join(cacheDir, "*.narinfo"))
	if second.Narinfos >= len(infos) {
		t.Errorf("one changed path: %d narinfos read of the %d the cache holds; want only those of missing paths", second.Narinfos, len(infos))
	}
	if !valid(t, store, gen2) {
		t.Errorf("%s is not in the client's store", gen2)
	}
	t.Logf("whole closure: %+v; one changed path: %+v", first, second)
}

// The handler serves the cache and nothing else of the chroot, and a host
// can never reach another host's cache.
func TestOnlyTheHostsOwnCache(t *testing.T) {
	ctx := context.Background()
	tops := buildHosts(t,
		host("alpha", nil),
		host("beta", func(h *fixture.Host) { h.Kernel = "beta-secret" }),
	)
	s := newServer(t)
	alpha := s.sshd.AddHost(t, "alpha")
	s.sshd.AddHost(t, "beta")
	s.publish(t, "alpha", tops["alpha"])
	s.publish(t, "beta", tops["beta"])
	if err := os.WriteFile(filepath.Join(s.sshd.Root, "alpha", "manifest.json"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	sc := s.sshd.SFTP(t, alpha)
	srv, err := sftpcache.Serve(ctx, sc, "cache", sftpcache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	alphaTop, _ := narinfo.HashPart(tops["alpha"])
	betaTop, _ := narinfo.HashPart(tops["beta"])
	alphaNAR := "/" + strings.TrimPrefix(narURL(t, s, "alpha", tops["alpha"]), "/")
	// beta's narinfo is there on the server: the checks below would prove
	// nothing if it were not.
	if _, err := os.Stat(filepath.Join(s.sshd.Root, "beta", "cache", betaTop+".narinfo")); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		method, path string
		want         int
	}{
		{"GET", "/nix-cache-info", 200},
		{"GET", "/" + alphaTop + ".narinfo", 200},
		{"HEAD", "/" + alphaTop + ".narinfo", 200},
		{"GET", alphaNAR, 200},
		{"GET", "/" + betaTop + ".narinfo", 404}, // beta's: not in alpha's chroot
		{"GET", "/" + strings.Repeat("0", 32) + ".narinfo", 404},
		{"GET", "/manifest.json", 404},         // in the chroot, but not the cache
		{"GET", "/../manifest.json", 404},      // escapes the cache
		{"GET", "/nar/../nix-cache-info", 404}, // not a NAR name
		{"GET", "/cache/nix-cache-info", 404},  // not a cache path
		{"GET", alphaNAR + ".exe", 404},        // not a NAR name
		{"GET", "/../beta/cache/" + betaTop + ".narinfo", 404},
		{"GET", "/", 404},
		{"POST", "/nix-cache-info", 405},
	}
	for _, c := range cases {
		req, _ := http.NewRequestWithContext(ctx, c.method, srv.URL+c.path, nil)
		// Keep the path as written: no client-side cleaning of "..".
		req.URL.Opaque = c.path
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, resp.StatusCode, c.want)
		}
	}
	// The chroot, not the handler, is what stops a host: even straight
	// through SFTP, beta's cache is out of alpha's reach.
	for _, p := range []string{"../beta/cache/" + betaTop + ".narinfo", "/beta/cache/" + betaTop + ".narinfo", "/../../" + filepath.Base(s.sshd.Root) + "/beta/cache/nix-cache-info"} {
		if f, err := sc.Open(p); err == nil {
			f.Close()
			t.Errorf("alpha opened %s", p)
		}
	}
	// And Nix cannot get beta's system through alpha's tunnel.
	if err := realise(ctx, srv, s.key, filepath.Join(t.TempDir(), "client"), tops["beta"]); err == nil {
		t.Error("alpha realised beta's system through its own chroot")
	}
}

func narURL(t *testing.T, s *server, hostName, top string) string {
	t.Helper()
	h, _ := narinfo.HashPart(top)
	data, err := os.ReadFile(filepath.Join(s.sshd.Root, hostName, "cache", h+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	in, err := narinfo.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return in.URL
}

// Whatever is altered in a host's cache on the server, Nix refuses it, the
// client store stays without the path, and the error names the file.
func TestTamperedCacheIsRefusedAndReported(t *testing.T) {
	cases := []struct {
		name string
		// tamper edits the host's cache (never the pool: the files are hard
		// links, so it replaces them).
		tamper func(t *testing.T, s *server, cacheDir, top string)
		want   string
	}{
		{"narinfo altered", func(t *testing.T, s *server, cacheDir, top string) {
			h, _ := narinfo.HashPart(top)
			replace(t, filepath.Join(cacheDir, h+".narinfo"), func(b []byte) []byte {
				return []byte(strings.Replace(string(b), "NarSize: ", "NarSize: 1", 1))
			})
		}, "not signed by any trusted key"},
		{"narinfo signed by another key", func(t *testing.T, s *server, cacheDir, top string) {
			dir := t.TempDir()
			other := &cache.Pool{Dir: filepath.Join(filepath.Dir(s.sshd.Root), "other-pool"), Nix: runner(), SecretKeyFile: filepath.Join(dir, "sec")}
			if _, err := cache.GenerateKey(context.Background(), runner(), "mallory-1", other.SecretKeyFile, filepath.Join(dir, "pub")); err != nil {
				t.Fatal(err)
			}
			if err := other.Add(context.Background(), []string{top}); err != nil {
				t.Fatal(err)
			}
			h, _ := narinfo.HashPart(top)
			data, err := os.ReadFile(filepath.Join(other.Dir, h+".narinfo"))
			if err != nil {
				t.Fatal(err)
			}
			replace(t, filepath.Join(cacheDir, h+".narinfo"), func([]byte) []byte { return data })
		}, "not signed by any trusted key (bento-test-1)"},
		{"NAR altered", func(t *testing.T, s *server, cacheDir, top string) {
			h, _ := narinfo.HashPart(top)
			in := parse(t, filepath.Join(cacheDir, h+".narinfo"))
			// Another valid compressed NAR, so only the hash can tell.
			other := filepath.Join(cacheDir, narURL(t, s, "alpha", closureWith(t, top, "fixture-kernel-1")))
			data, err := os.ReadFile(other)
			if err != nil {
				t.Fatal(err)
			}
			replace(t, filepath.Join(cacheDir, in.URL), func([]byte) []byte { return data })
		}, "content does not match its name"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			top := buildHosts(t, host("alpha", func(h *fixture.Host) { h.Generation = "tamper" }))["alpha"]
			s := newServer(t)
			alpha := s.sshd.AddHost(t, "alpha")
			s.publish(t, "alpha", top)
			cacheDir := filepath.Join(s.sshd.Root, "alpha", "cache")
			c.tamper(t, s, cacheDir, top)

			srv, err := sftpcache.Serve(ctx, s.sshd.SFTP(t, alpha), "cache", sftpcache.Options{PublicKeys: []narinfo.PublicKey{s.key}})
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			store := filepath.Join(t.TempDir(), "client")
			err = realise(ctx, srv, s.key, store, top)
			if err == nil {
				t.Fatal("Nix accepted a tampered cache")
			}
			if valid(t, store, top) {
				t.Error("the tampered path entered the client's store")
			}
			err = srv.Explain(err)
			if !errors.Is(err, sftpcache.ErrTampered) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("reported as %q; want it to say %q", err, c.want)
			}
			// The pool is intact: other hosts are unaffected.
			h, _ := narinfo.HashPart(top)
			in := parse(t, filepath.Join(s.pool.Dir, h+".narinfo"))
			if err := in.Verify([]narinfo.PublicKey{s.key}); err != nil {
				t.Errorf("tampering with a host cache changed the pool: %v", err)
			}
		})
	}
}

func closureWith(t *testing.T, top, suffix string) string {
	t.Helper()
	for _, p := range closure(t, top) {
		if strings.HasSuffix(p, suffix) {
			return p
		}
	}
	t.Fatalf("no %s in the closure of %s", suffix, top)
	return ""
}

func parse(t *testing.T, file string) *narinfo.Info {
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

// replace swaps file for edited content by rename, leaving the inode it
// shared with the pool alone.
func replace(t *testing.T, file string, edit func([]byte) []byte) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	tmp := file + ".new"
	if err := os.WriteFile(tmp, edit(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
}

// When the SFTP session is gone the handler says so (502), rather than
// "not found", and stops with its context.
func TestLostServer(t *testing.T) {
	top := buildHosts(t, host("alpha", nil))["alpha"]
	s := newServer(t)
	alpha := s.sshd.AddHost(t, "alpha")
	s.publish(t, "alpha", top)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := sftpcache.Serve(ctx, s.sshd.SFTP(t, alpha), "cache", sftpcache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	h, _ := narinfo.HashPart(top)
	get := func() (int, error) {
		resp, err := http.Get(srv.URL + "/" + h + ".narinfo")
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := get(); code != 200 {
		t.Fatalf("before: %d, %v", code, err)
	}
	s.sshd.Stop()
	if code, err := get(); code != http.StatusBadGateway {
		t.Errorf("with the server gone: %d, %v; want 502", code, err)
	}
	cancel()
	srv.Close()
	if _, err := get(); err == nil {
		t.Error("still serving after its context ended")
	}
}

// A manifest cannot point the cache outside the chroot's tree or carry a
// malformed key.
func TestServeManifestRefuses(t *testing.T) {
	cases := []struct {
		name string
		mc   *manifest.Cache
		want string
	}{
		{"no cache", nil, "announces no binary cache"},
		{"escaping dir", &manifest.Cache{Dir: "../beta/cache"}, "unsafe path"},
		{"absolute dir", &manifest.Cache{Dir: "/etc"}, "unsafe path"},
		{"bad key", &manifest.Cache{Dir: "cache", PublicKey: "nokey"}, "public key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv, err := sftpcache.ServeManifest(context.Background(), nil, c.mc, nil)
			if err == nil {
				srv.Close()
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}
