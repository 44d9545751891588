// Command watch measures watch mode ("bento agent watch") against a real
// sshd on loopback: what each watching host costs the server (sshd
// processes, memory, CPU, bytes per look) and how long a publication takes
// to be seen by every host.
//
// N watchers (agent.Watch, in this process) hold one SSH connection each,
// spread over a few SFTP users (sshd's cost per connection does not depend
// on which user it is), and look at their manifest every -every. The
// baseline, measured in the same run, is the server with no watcher.
// Publication latency: every chroot's manifest.json is replaced at once and
// the time until each watcher's tick starts is recorded; a real tick (apply
// of a new publication, measured by bench/agent) comes on top.
//
//	go run ./bench/watch -hosts 200 -every 5s -window 30s
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bento-nix/bento/agent"
	"github.com/bento-nix/bento/agent/backoff"
	"github.com/bento-nix/bento/internal/benchtb"
	"github.com/bento-nix/bento/internal/sshdtest"
	"github.com/bento-nix/bento/manifest"
)

func main() {
	hosts := flag.Int("hosts", 200, "watching hosts")
	users := flag.Int("users", 10, "SFTP users the hosts are spread over")
	every := flag.Duration("every", 5*time.Second, "pause between two looks")
	window := flag.Duration("window", 30*time.Second, "how long the idle cost is measured")
	flag.Parse()
	os.Exit(benchtb.Run("bench/watch", io.Discard, func(tb *benchtb.TB) error {
		return run(tb, *hosts, *users, *every, *window)
	}))
}

// watchBench is one run's server, its SFTP users and what the watchers
// report to the measurement.
type watchBench struct {
	srv            *sshdtest.Server
	clients        []*sshdtest.Client
	nHosts, nUsers int
	every          time.Duration

	bytes       benchtb.Counter
	looks       atomic.Int64
	publishedAt atomic.Int64 // unix nanos; 0 before the publication
	seenAt      chan time.Duration
	firstTick   chan int
}

// idleCost is the server while every watcher looks and nothing changes:
// its cost before and after the window, and the looks and bytes in it.
type idleCost struct {
	held, idle cost
	looks      int64
	bin, bout  int64
}

func run(tb *benchtb.TB, nHosts, nUsers int, every, window time.Duration) error {
	b, err := setUp(tb, nHosts, nUsers, every)
	if err != nil {
		return err
	}
	base := sshdCost(b.srv)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	connected, err := b.connectAll(ctx, tb, &wg)
	if err != nil {
		return err
	}
	idle := b.measureIdle(window)
	lat, err := b.publish()
	if err != nil {
		return err
	}
	b.report(base, idle, connected, window, lat)
	return nil
}

// setUp starts sshd with nUsers SFTP users, each with a first manifest.
func setUp(tb *benchtb.TB, nHosts, nUsers int, every time.Duration) (*watchBench, error) {
	b := &watchBench{srv: sshdtest.Start(tb, sshdtest.Options{}), nHosts: nHosts, nUsers: nUsers, every: every,
		seenAt: make(chan time.Duration, nHosts), firstTick: make(chan int, nHosts)}
	for i := 0; i < nUsers; i++ {
		c := b.srv.AddHost(tb, fmt.Sprintf("w%03d", i))
		if err := writeManifest(b.srv.Root, c.Host, 0); err != nil {
			return nil, err
		}
		b.clients = append(b.clients, c)
	}
	return b, nil
}

// connectAll starts the watchers and returns once each has ticked once,
// with the time that took.
func (b *watchBench) connectAll(ctx context.Context, tb *benchtb.TB, wg *sync.WaitGroup) (time.Duration, error) {
	start := time.Now()
	for i := 0; i < b.nHosts; i++ {
		b.startWatcher(ctx, wg, i, b.config(tb, i))
		// sshd takes at most MaxStartups unauthenticated connections at
		// once: let each batch log in before the next.
		if (i+1)%50 == 0 {
			if err := b.awaitBatch(50); err != nil {
				return 0, err
			}
		}
	}
	for j := 0; j < b.nHosts%50; j++ {
		<-b.firstTick
	}
	return time.Since(start), nil
}

// config is watcher i's agent configuration: one of the SFTP users, a
// state directory of its own.
func (b *watchBench) config(tb *benchtb.TB, i int) agent.Config {
	c := b.clients[i%b.nUsers]
	cfg := agent.Defaults()
	cfg.Host, cfg.User, cfg.Server = c.Host, c.User, "127.0.0.1"
	cfg.Port = b.srv.Port
	cfg.IdentityFile, cfg.ServerHostKey = c.KeyFile, b.srv.KnownHostsLine
	cfg.StateDir = filepath.Join(tb.TempDir(), "state")
	return cfg
}

// startWatcher runs watcher i until ctx ends: its ticks record how long
// after the publication they came, its first tick announces it connected.
func (b *watchBench) startWatcher(ctx context.Context, wg *sync.WaitGroup, i int, cfg agent.Config) {
	seen := false
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := agent.Watch(ctx, cfg, agent.WatchOptions{
			Every:     b.every,
			Dial:      b.bytes.Dial,
			Reconnect: backoff.Policy{Initial: 100 * time.Millisecond, Max: 2 * time.Second},
			Tick: func(context.Context) error {
				if p := b.publishedAt.Load(); p != 0 {
					b.seenAt <- time.Duration(time.Now().UnixNano() - p)
				}
				if !seen {
					seen = true
					b.firstTick <- i
				}
				return nil
			},
			Changed: func(bool) { b.looks.Add(1) },
		})
		if err != nil {
			fmt.Fprintf(os.Stderr, "watcher %d: %v\n", i, err)
		}
	}()
}

// awaitBatch waits for n watchers' first tick, each within 2 minutes.
func (b *watchBench) awaitBatch(n int) error {
	for j := 0; j < n; j++ {
		select {
		case <-b.firstTick:
		case <-time.After(2 * time.Minute):
			return fmt.Errorf("watchers did not connect within 2 minutes")
		}
	}
	return nil
}

// measureIdle: every watcher looks, nothing changes, for window.
func (b *watchBench) measureIdle(window time.Duration) idleCost {
	held := sshdCost(b.srv)
	b0in, b0out, l0 := b.bytes.In.Load(), b.bytes.Out.Load(), b.looks.Load()
	time.Sleep(window)
	idle := sshdCost(b.srv)
	return idleCost{held: held, idle: idle, looks: b.looks.Load() - l0,
		bin: b.bytes.In.Load() - b0in, bout: b.bytes.Out.Load() - b0out}
}

// publish replaces every manifest at once and returns, sorted, how long
// each watcher took to tick on it.
func (b *watchBench) publish() ([]time.Duration, error) {
	b.publishedAt.Store(time.Now().UnixNano())
	for _, c := range b.clients {
		if err := writeManifest(b.srv.Root, c.Host, 1); err != nil {
			return nil, err
		}
	}
	var lat []time.Duration
	limit := time.After(3*b.every + 30*time.Second)
	for len(lat) < b.nHosts {
		select {
		case d := <-b.seenAt:
			lat = append(lat, d)
		case <-limit:
			return nil, fmt.Errorf("only %d of %d watchers saw the publication within %s", len(lat), b.nHosts, 3*b.every+30*time.Second)
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat, nil
}

func (b *watchBench) report(base cost, ic idleCost, connected, window time.Duration, lat []time.Duration) {
	nHosts, held, lw, bin, bout := b.nHosts, ic.held, ic.looks, ic.bin, ic.bout
	procs := held.procs - base.procs
	mem := held.pssKiB - base.pssKiB
	cpu := ic.idle.cpuTicks - held.cpuTicks
	fmt.Printf("watch mode: %d hosts (over %d SFTP users), a look every %s, one sshd on loopback\n\n", nHosts, b.nUsers, b.every)
	fmt.Printf("%-44s %12s %12s\n", "", "no watcher", "watching")
	fmt.Printf("%-44s %12d %12d\n", "sshd processes", base.procs, held.procs)
	fmt.Printf("%-44s %12d %12d\n", "sshd memory (PSS, KiB)", base.pssKiB, held.pssKiB)
	fmt.Println()
	fmt.Printf("connecting all hosts (batches of 50): %s\n", connected.Round(time.Millisecond))
	fmt.Printf("per watching host: %.1f sshd processes, %.0f KiB of sshd memory (PSS)\n", float64(procs)/float64(nHosts), float64(mem)/float64(nHosts))
	fmt.Printf("sshd CPU while idle: %.2f%% of one core for %d hosts (%.3f ms per look)\n",
		100*float64(cpu)/clockTicks/window.Seconds(), nHosts, 1000*float64(cpu)/clockTicks/float64(max(lw, 1)))
	fmt.Printf("bytes per look (TCP payload, keepalives included): %.0f in, %.0f out\n", float64(bin)/float64(max(lw, 1)), float64(bout)/float64(max(lw, 1)))
	fmt.Printf("per host per day at this rate: %.1f MiB\n", float64(bin+bout)/float64(nHosts)/window.Seconds()*86400/(1<<20))
	fmt.Printf("publication seen by every host: p50 %s, p99 %s, max %s (goal p50 <= 15s; the timer: %s)\n",
		pct(lat, 50), pct(lat, 99), lat[len(lat)-1].Round(time.Millisecond), "10 min ± 5 min")
	fmt.Println("a tick's own time (download, build, switch) comes on top: see bench/agent")
	// One line for bench/table: figure, anchor, bento, goal.
	fmt.Printf("table: publish -> seen, %d watching hosts\tthe timer: 10 min +- 5 min\tp50 %s, p99 %s; sshd %.1f MiB per host\t<= 15s median\n",
		nHosts, pct(lat, 50), pct(lat, 99), float64(mem)/float64(nHosts)/1024)
	if extra := 1024 * 1024 * 1024 / max(float64(mem)/float64(nHosts)*1024, 1); extra > 0 {
		fmt.Printf("at this cost one GiB of sshd memory holds about %.0f watching hosts\n", extra)
	}
}

func pct(d []time.Duration, p int) time.Duration {
	i := (len(d)*p + 99) / 100
	if i >= len(d) {
		i = len(d) - 1
	}
	if i > 0 {
		i--
	}
	return d[i].Round(time.Millisecond)
}

// writeManifest replaces a chroot's manifest.json as the publisher does
// (temp file, rename), with a later mtime each revision.
func writeManifest(root, host string, rev int) error {
	dir := filepath.Join(root, host)
	m := manifest.Manifest{Format: manifest.ManifestFormat, Host: host, Version: fmt.Sprintf("%016x", rev+1), PublishedAt: time.Now().UTC()}
	data := []byte(fmt.Sprintf(`{"format":%d,"host":%q,"version":%q,"publishedAt":%q,"flake":{"attr":"nixosConfigurations.%s"},"files":[]}`+"\n",
		m.Format, m.Host, m.Version, m.PublishedAt.Format(time.RFC3339Nano), host))
	tmp := filepath.Join(dir, ".manifest.json.tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	t := time.Now().Add(time.Duration(rev) * time.Second)
	if err := os.Chtimes(tmp, t, t); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, manifest.ManifestFile))
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's CPU times (100
// on every Linux architecture bento supports).
const clockTicks = 100

type cost struct {
	procs    int
	pssKiB   int64
	cpuTicks int64
}

// sshdCost sums the sshd processes' memory and CPU: the listener and every
// session process below it.
func sshdCost(srv *sshdtest.Server) cost {
	var c cost
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if !isTestSshd(e.Name(), srv) {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		c.procs++
		c.pssKiB += pssKiB(dir)
		c.cpuTicks += cpuTicks(dir)
	}
	return c
}

// isTestSshd tells whether /proc/<name> is an sshd process of srv's.
func isTestSshd(name string, srv *sshdtest.Server) bool {
	pid, err := strconv.Atoi(name)
	if err != nil {
		return false
	}
	exe, err := os.Readlink(filepath.Join("/proc", name, "exe"))
	if err != nil || filepath.Base(exe) != "sshd" {
		return false
	}
	cmdline, _ := os.ReadFile(filepath.Join("/proc", name, "cmdline"))
	if !strings.Contains(string(cmdline), "sshd") {
		return false
	}
	return belongsTo(pid, srv)
}

// pssKiB is the process's proportional set size (smaps_rollup), 0 if
// unreadable.
func pssKiB(dir string) int64 {
	var total int64
	if data, err := os.ReadFile(filepath.Join(dir, "smaps_rollup")); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "Pss:" {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				total += n
			}
		}
	}
	return total
}

// cpuTicks is the process's user and system CPU time, in clockTicks, 0 if
// unreadable.
func cpuTicks(dir string) int64 {
	if data, err := os.ReadFile(filepath.Join(dir, "stat")); err == nil {
		// Fields after the command name in parentheses: utime is the
		// 14th field of the line, stime the 15th.
		s := string(data)
		if i := strings.LastIndexByte(s, ')'); i > 0 {
			f := strings.Fields(s[i+1:])
			if len(f) > 13 {
				u, _ := strconv.ParseInt(f[11], 10, 64)
				st, _ := strconv.ParseInt(f[12], 10, 64)
				return u + st
			}
		}
	}
	return 0
}

// belongsTo tells whether pid is the test sshd or one of its descendants.
func belongsTo(pid int, srv *sshdtest.Server) bool {
	data, err := os.ReadFile(filepath.Join(srv.StateDir, "sshd.pid"))
	if err != nil {
		return false
	}
	root, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	for p := pid; p > 1; {
		if p == root {
			return true
		}
		stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p), "stat"))
		if err != nil {
			return false
		}
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			return false
		}
		p, _ = strconv.Atoi(f[1])
	}
	return false
}
