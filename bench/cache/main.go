// Command cache benchmarks the per-host binary cache (issue 8) on a
// generated fleet whose hosts share most of their closure, as NixOS hosts
// do: a set of shared packages plus a small per-host part.
//
//   - disk: the pool plus every host's cache (blocks of unique inodes, so
//     hard links count once) against one host's closure and against the
//     fleet's distinct paths stored once, and against what separate
//     per-host caches without links would take;
//   - transfer: bytes read through the SFTP tunnel for a first update and
//     for a publication that changed one path;
//   - time: realising one host's closure into an empty store through the
//     tunnel (real sshd, chroot, SFTP, the agent's HTTP shim) against nix
//     copy --from file:// of the same cache on the same machine, the limit.
//
// It runs a real sshd, so it needs root, like the tests.
//
//	go run ./bench/cache -hosts 50 -shared-mib 32 -unique-kib 16,1700
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bento-nix/bento/internal/benchtb"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/bento-nix/bento/cache"
	"github.com/bento-nix/bento/cache/narinfo"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/internal/sshdtest"
	"github.com/bento-nix/bento/nix"
	"github.com/bento-nix/bento/sftpcache"
)

func main() {
	hosts := flag.Int("hosts", 50, "hosts in the fleet")
	sharedMiB := flag.Int("shared-mib", 32, "size of the packages every host shares, MiB")
	packages := flag.Int("packages", 16, "number of shared packages")
	unique := flag.String("unique-kib", "16,1700", "per-host unique part, KiB; one scenario per value")
	runs := flag.Int("runs", 5, "realisations timed per method (the median is printed)")
	packet := flag.Int("sftp-packet", 0, "SFTP read size in bytes (0: pkg/sftp default, 32 KiB)")
	flag.Parse()
	if *packet > 0 {
		sftpOpts = append(sftpOpts, sftp.MaxPacketUnchecked(*packet))
	}
	var uniques []int
	for _, s := range strings.Split(*unique, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "bench/cache: -unique-kib %q: want positive integers separated by commas\n", *unique)
			os.Exit(2)
		}
		uniques = append(uniques, n)
	}
	os.Exit(benchtb.Run("bench/cache", os.Stderr, func(tb *benchtb.TB) error {
		for _, u := range uniques {
			if err := run(tb, *hosts, *sharedMiB, *packages, u, *runs); err != nil {
				return err
			}
		}
		return nil
	}))
}

var r = &nix.Runner{Env: fixture.Env()}

// cacheBench is one scenario's fleet, its pool and the sshd that serves
// the hosts' caches.
type cacheBench struct {
	work                       string
	hosts, packages, uniqueKiB int
	pkgBytes                   int64
	srv                        *sshdtest.Server
	pool                       *cache.Pool
	key                        narinfo.PublicKey
	tops                       []string // generation 1's toplevels, in host order
}

// diskFigures are the disk usages measureDisk compares.
type diskFigures struct {
	one      int64 // one host's cache
	union    int64 // the pool: the fleet's distinct paths once
	all      int64 // the pool and every host's cache
	separate int64 // the hosts' caches counted apart
}

func run(tb *benchtb.TB, hosts, sharedMiB, packages, uniqueKiB, runs int) error {
	ctx := context.Background()
	shared := int64(sharedMiB) << 20
	fmt.Printf("\n== %d hosts, %d MiB shared in %d packages, %d KiB unique per host (%.2f%% of a closure)\n",
		hosts, sharedMiB, packages, uniqueKiB, 100*float64(uniqueKiB<<10)/float64(shared+int64(uniqueKiB)<<10))

	work, err := os.MkdirTemp("", "bento-bench-cache-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	b := &cacheBench{work: work, hosts: hosts, packages: packages, uniqueKiB: uniqueKiB, pkgBytes: shared / int64(packages)}
	if err := b.setUp(ctx, tb); err != nil {
		return err
	}
	if err := b.measureDisk(ctx); err != nil {
		return err
	}

	// Transfer and time, for host 0.
	client := b.srv.AddHost(tb, hostName(0))
	first, err := b.measureTransfer(ctx, client)
	if err != nil {
		return err
	}
	return b.measureTime(ctx, client, first, runs)
}

// setUp builds the fleet's first generation, starts sshd and makes the
// pool with its signing key.
func (b *cacheBench) setUp(ctx context.Context, tb *benchtb.TB) error {
	var err error
	if b.tops, err = b.buildFleet(ctx, "1"); err != nil {
		return err
	}
	b.srv = sshdtest.Start(tb, sshdtest.Options{})
	base := filepath.Dir(b.srv.Root)
	if _, err := cache.GenerateKey(ctx, r, "bench-1", filepath.Join(base, "key.sec"), filepath.Join(base, "key.pub")); err != nil {
		return err
	}
	b.pool = &cache.Pool{Dir: filepath.Join(base, "pool"), Nix: r, SecretKeyFile: filepath.Join(base, "key.sec")}
	b.key, err = b.pool.PublicKey()
	return err
}

func (b *cacheBench) buildFleet(ctx context.Context, gen string) ([]string, error) {
	return buildFleet(ctx, filepath.Join(b.work, "fleet"), b.hosts, b.packages, b.pkgBytes, b.uniqueKiB, gen)
}

func (b *cacheBench) hostCache(i int) string { return filepath.Join(b.srv.Root, hostName(i), "cache") }

// measureDisk fills the pool and every host's cache, timed, and compares
// what they take on disk.
func (b *cacheBench) measureDisk(ctx context.Context) error {
	start := time.Now()
	if err := b.pool.Add(ctx, b.tops); err != nil {
		return err
	}
	addTime := time.Since(start)
	start = time.Now()
	for i, top := range b.tops {
		if _, err := b.pool.LinkHost(ctx, filepath.Join(b.srv.Root, hostName(i)), []string{top}); err != nil {
			return err
		}
	}
	linkTime := time.Since(start)
	d, err := b.diskUsages()
	if err != nil {
		return err
	}
	n := len(b.tops)
	fmt.Printf("pool: nix copy of %d closures %v, %d LinkHost %v (%v per host)\n", n, addTime.Round(time.Millisecond), n, linkTime.Round(time.Millisecond), (linkTime / time.Duration(n)).Round(time.Microsecond))
	reportDisk(n, d)
	return nil
}

func (b *cacheBench) diskUsages() (diskFigures, error) {
	var d diskFigures
	var err error
	if d.one, err = diskUsage(b.hostCache(0)); err != nil {
		return d, err
	}
	if d.union, err = diskUsage(b.pool.Dir); err != nil {
		return d, err
	}
	if d.all, err = diskUsage(b.pool.Dir, b.srv.Root); err != nil {
		return d, err
	}
	for i := range b.tops {
		u, err := diskUsage(b.hostCache(i))
		if err != nil {
			return d, err
		}
		d.separate += u
	}
	return d, nil
}

func reportDisk(n int, d diskFigures) {
	fmt.Printf("disk: one host's closure %s; the fleet's distinct paths once (pool) %s\n", mib(d.one), mib(d.union))
	// Both views: the goal compares with one closure, which only
	// holds while the hosts' own paths are small; against the fleet's
	// distinct paths is what the hard links themselves cost.
	verdict := "met"
	if ratio(d.all, d.one) > 1.1 {
		verdict = fmt.Sprintf("NOT met: the hosts' own paths add %s of distinct data that no sharing can avoid", mib(d.union-d.one))
	}
	fmt.Printf("disk: pool + %d host caches %s = %.2f× one closure (the issue's goal ≤ 1.1×: %s)\n", n, mib(d.all), ratio(d.all, d.one), verdict)
	fmt.Printf("disk: pool + %d host caches %s = %.3f× the fleet's distinct paths stored once (what the per-host links cost)\n", n, mib(d.all), ratio(d.all, d.union))
	fmt.Printf("disk: %d separate caches without links would take %s (%.1f× bento's)\n", n, mib(d.separate), ratio(d.separate, d.all))
}

// measureTransfer reads host 0's closure through the tunnel into a fresh
// store, then publishes a second generation of host 0 and reads again:
// the first update against one changed path.
func (b *cacheBench) measureTransfer(ctx context.Context, client *sshdtest.Client) (tunnelResult, error) {
	clientStore := filepath.Join(b.work, "client")
	first, err := tunnel(ctx, b.srv, client, b.key, clientStore, b.tops[0])
	if err != nil {
		return first, err
	}
	next, err := b.buildFleet(ctx, "2")
	if err != nil {
		return first, err
	}
	if err := b.pool.Add(ctx, next[:1]); err != nil {
		return first, err
	}
	if _, err := b.pool.LinkHost(ctx, filepath.Join(b.srv.Root, hostName(0)), []string{next[0], b.tops[0]}); err != nil {
		return first, err
	}
	second, err := tunnel(ctx, b.srv, client, b.key, clientStore, next[0])
	if err != nil {
		return first, err
	}
	fmt.Printf("transfer: first update %s read (%d NARs, %d narinfos), SSH wire %s in / %s out\n", kib(first.stats.Bytes), first.stats.NARs, first.stats.Narinfos, kib(first.wireIn), kib(first.wireOut))
	fmt.Printf("transfer: one changed path %s read (%d NAR), SSH wire %s in / %s out: %.4f× the first\n", kib(second.stats.Bytes), second.stats.NARs, kib(second.wireIn), kib(second.wireOut), ratio(second.stats.Bytes, first.stats.Bytes))
	return first, nil
}

// measureTime realises host 0's closure into empty stores runs times each
// way: through the tunnel, nix copy from the cache on disk (the limit),
// and plain HTTP from local disk; it prints the medians' ratios.
func (b *cacheBench) measureTime(ctx context.Context, client *sshdtest.Client, first tunnelResult, runs int) error {
	var viaTunnel, viaFile, viaHTTP []time.Duration
	cacheDir := b.hostCache(0)
	for i := 0; i < runs; i++ {
		res, err := tunnel(ctx, b.srv, client, b.key, filepath.Join(b.work, fmt.Sprintf("t%d", i)), b.tops[0])
		if err != nil {
			return err
		}
		viaTunnel = append(viaTunnel, res.took)
		d, err := fileCopy(ctx, cacheDir, b.key, filepath.Join(b.work, fmt.Sprintf("f%d", i)), b.tops[0])
		if err != nil {
			return err
		}
		viaFile = append(viaFile, d)
		d, err = localHTTP(ctx, cacheDir, b.key, filepath.Join(b.work, fmt.Sprintf("h%d", i)), b.tops[0])
		if err != nil {
			return err
		}
		viaHTTP = append(viaHTTP, d)
	}
	t, f, h := median(viaTunnel), median(viaFile), median(viaHTTP)
	fmt.Printf("time: realise a %s closure into an empty store: through the tunnel %v, nix copy --from file:// %v (the limit): %.2f×\n", kib(first.stats.Bytes), t.Round(time.Millisecond), f.Round(time.Millisecond), float64(t)/float64(f))
	fmt.Printf("time: the same over plain HTTP from local disk (no SSH) %v: %.2f× the limit, so SSH+SFTP adds %.2f×\n", h.Round(time.Millisecond), float64(h)/float64(f), float64(t)/float64(h))
	return nil
}

func hostName(i int) string { return fmt.Sprintf("host-%03d", i) }

// buildFleet writes a flake of hosts whose toplevels reference the shared
// packages and one unique package each, builds them all and returns the
// toplevels in host order. gen changes every host's toplevel only.
func buildFleet(ctx context.Context, dir string, hosts, packages int, pkgBytes int64, uniqueKiB int, gen string) ([]string, error) {
	flake := fmt.Sprintf(`{
  outputs = { self }:
    let
      system = %q;
      # base64 of random bytes: about as compressible as binaries.
      blob = name: bytes: derivation {
        inherit name system;
        builder = "/bin/sh";
        args = [ "-c" "/bin/mkdir -p $out && /bin/base64 /dev/urandom | /bin/head -c ${toString bytes} > $out/data" ];
      };
      shared = builtins.genList (i: blob "bench-shared-${toString i}" %d) %d;
      host = i: let
        name = "host-${toString i}";
        own = blob "bench-own-${name}" %d;
      in derivation {
        name = "bench-system-${name}-%s";
        inherit system;
        builder = "/bin/sh";
        args = [ "-c" "/bin/mkdir -p $out && /bin/echo ${toString shared} ${own} > $out/refs" ];
      };
    in {
      toplevels = builtins.genList host %d;
    };
}
`, fixture.NixSystem(), pkgBytes, packages, uniqueKiB<<10, gen, hosts)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte(flake), 0o644); err != nil {
		return nil, err
	}
	out, err := r.Output(ctx, "", "build", "--no-link", "--json", "--impure", "--expr",
		fmt.Sprintf(`(builtins.getFlake "path:%s").toplevels`, dir))
	if err != nil {
		return nil, err
	}
	var res []struct {
		Outputs map[string]string `json:"outputs"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return nil, err
	}
	var tops []string
	for _, x := range res {
		tops = append(tops, x.Outputs["out"])
	}
	if len(tops) != hosts {
		return nil, fmt.Errorf("built %d toplevels, want %d", len(tops), hosts)
	}
	return tops, nil
}

type tunnelResult struct {
	stats           sftpcache.Stats
	wireIn, wireOut int64
	took            time.Duration
}

// tunnel does what the agent does in fetch mode: one SSH connection, the
// HTTP shim on it, nix-store --realise against the client's store. The
// time excludes the SSH handshake, which the tick has made already.
func tunnel(ctx context.Context, srv *sshdtest.Server, c *sshdtest.Client, key narinfo.PublicKey, store, top string) (tunnelResult, error) {
	raw, err := net.Dial("tcp", srv.Addr)
	if err != nil {
		return tunnelResult{}, err
	}
	conn := &countingConn{Conn: raw}
	sc, chans, reqs, err := ssh.NewClientConn(conn, srv.Addr, srv.ClientConfig(c))
	if err != nil {
		raw.Close()
		return tunnelResult{}, err
	}
	client := ssh.NewClient(sc, chans, reqs)
	defer client.Close()
	fs, err := sftp.NewClient(client, sftpOpts...)
	if err != nil {
		return tunnelResult{}, err
	}
	defer fs.Close()
	// Timed from here: a tick has its SSH session open already.
	start := time.Now()
	s, err := sftpcache.Serve(ctx, fs, "cache", sftpcache.Options{PublicKeys: []narinfo.PublicKey{key}})
	if err != nil {
		return tunnelResult{}, err
	}
	defer s.Close()
	// The options the agent gives nix-store in fetch mode.
	args := []string{"--store", store, "--option", "require-sigs", "true", "--realise", top,
		"--option", "narinfo-cache-negative-ttl", "0",
		"--option", "extra-substituters", s.URL,
		"--option", "extra-trusted-public-keys", key.String()}
	if _, err := r.Run(ctx, nix.Cmd{Tool: "nix-store", Args: args, ExtraEnv: []string{"XDG_CACHE_HOME=" + store + "-xdg"}}); err != nil {
		return tunnelResult{}, s.Explain(err)
	}
	return tunnelResult{stats: s.Stats(), wireIn: conn.in.Load(), wireOut: conn.out.Load(), took: time.Since(start)}, nil
}

// fileCopy is the limit: the same cache read straight from disk.
func fileCopy(ctx context.Context, cacheDir string, key narinfo.PublicKey, store, top string) (time.Duration, error) {
	start := time.Now()
	_, err := r.Run(ctx, nix.Cmd{Args: []string{"copy", "--from", "file://" + cacheDir, "--to", store,
		"--option", "require-sigs", "true", "--option", "trusted-public-keys", key.String(), top},
		ExtraEnv: []string{"XDG_CACHE_HOME=" + store + "-xdg"}})
	return time.Since(start), err
}

// localHTTP is the same substitution over HTTP from the local disk: what
// the tunnel costs beyond Nix's own HTTP substitution.
func localHTTP(ctx context.Context, cacheDir string, key narinfo.PublicKey, store, top string) (time.Duration, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(cacheDir))}
	go srv.Serve(ln)
	defer srv.Close()
	start := time.Now()
	_, err = r.Run(ctx, nix.Cmd{Tool: "nix-store", Args: []string{"--store", store, "--option", "require-sigs", "true",
		"--option", "extra-substituters", "http://" + ln.Addr().String(), "--option", "extra-trusted-public-keys", key.String(), "--realise", top},
		ExtraEnv: []string{"XDG_CACHE_HOME=" + store + "-xdg"}})
	return time.Since(start), err
}

type countingConn struct {
	net.Conn
	in, out atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.Add(int64(n))
	return n, err
}

// diskUsage sums the allocated blocks of every file and directory under
// roots, counting each inode once: hard links cost nothing but their
// directory entries, which the directories' own blocks account for.
func diskUsage(roots ...string) (int64, error) {
	type id struct{ dev, ino uint64 }
	seen := map[id]bool{}
	var total int64
	for _, root := range roots {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			st := fi.Sys().(*syscall.Stat_t)
			k := id{uint64(st.Dev), st.Ino}
			if !seen[k] {
				seen[k] = true
				total += st.Blocks * 512
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	return total, nil
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func ratio(a, b int64) float64 { return float64(a) / float64(b) }
func mib(n int64) string       { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
func kib(n int64) string       { return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10)) }

var sftpOpts []sftp.ClientOption
