package eval_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/bento-nix/bento/eval"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/fixture"
)

func hostNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("h%d", i)
	}
	return out
}

// drain hands out every chunk as jobs workers would: the first jobs chunks
// at once, then one at a time, each observed at perHost bytes per host as
// it ends. It returns the chunk sizes in order.
func drain(c *eval.Chunker, jobs int, perHost int64) []int {
	var sizes []int
	var first [][]string
	for range jobs {
		if chunk := c.Next(); chunk != nil {
			first = append(first, chunk)
			sizes = append(sizes, len(chunk))
		}
	}
	for _, chunk := range first {
		c.Observe(len(chunk), perHost*int64(len(chunk)))
	}
	for chunk := c.Next(); chunk != nil; chunk = c.Next() {
		sizes = append(sizes, len(chunk))
		c.Observe(len(chunk), perHost*int64(len(chunk)))
	}
	return sizes
}

func TestChunkerSizesByMemory(t *testing.T) {
	const gib = int64(1) << 30
	cases := []struct {
		name    string
		n, jobs int
		budget  int64
		fixed   int
		perHost int64
		want    string
	}{
		// Cheap hosts and plenty of memory: the first chunks are sized
		// from the prior (512 MiB a host: 16 GiB / 2 jobs = 16 hosts), the
		// rest is split evenly between the two jobs.
		{"cheap hosts", 300, 2, 16 * gib, 0, 1 << 20, "16 16 134 134"},
		// Hosts of 1 GiB each, 4 GiB for 2 processes: after the first
		// round, 2 hosts per chunk.
		{"costly hosts", 20, 2, 4 * gib, 0, gib, "4 4 2 2 2 2 2 2"},
		// The budget holds not even one host per process: one at a time.
		{"tiny budget", 3, 2, 1 << 20, 0, gib, "1 1 1"},
		// --eval-chunk wins over any budget.
		{"fixed", 10, 2, 64 * gib, 3, 1 << 20, "3 3 3 1"},
		// Fewer hosts than the prior allows: an even split at once.
		{"small fleet", 10, 2, 64 * gib, 0, 1 << 20, "5 5"},
		{"no hosts", 0, 2, 64 * gib, 0, 1 << 20, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := eval.NewChunker(hostNames(tc.n), tc.jobs, tc.budget, tc.fixed)
			got := strings.Trim(fmt.Sprint(drain(c, tc.jobs, tc.perHost)), "[]")
			if got != tc.want {
				t.Errorf("chunk sizes %q, want %q", got, tc.want)
			}
		})
	}
}

func TestChunkerHandsOutEveryHostOnce(t *testing.T) {
	names := hostNames(1000)
	c := eval.NewChunker(names, 4, 3<<30, 0)
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for chunk := c.Next(); chunk != nil; chunk = c.Next() {
				c.Observe(len(chunk), int64(len(chunk))<<20)
				mu.Lock()
				for _, n := range chunk {
					seen[n]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != len(names) {
		t.Fatalf("%d hosts handed out, want %d", len(seen), len(names))
	}
	for n, k := range seen {
		if k != 1 {
			t.Errorf("host %s handed out %d times", n, k)
		}
	}
}

func TestDefaultBudget(t *testing.T) {
	meminfo := "MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n"
	if got, want := eval.DefaultBudget([]byte(meminfo)), int64(8000000*1024*3/4); got != want {
		t.Errorf("budget %d, want %d (3/4 of MemAvailable)", got, want)
	}
	for _, bad := range []string{"", "MemAvailable: lots\n", "MemAvailable: 5 MB\n"} {
		if got := eval.DefaultBudget([]byte(bad)); got != 4<<30 {
			t.Errorf("meminfo %q: budget %d, want the 4 GiB fallback", bad, got)
		}
	}
	if _, err := os.Stat("/proc/meminfo"); err == nil && eval.SystemBudget() == 4<<30 {
		t.Error("SystemBudget fell back although /proc/meminfo exists")
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"8G": 8 << 30, "512M": 512 << 20, "1.5GiB": 3 << 29, "4096": 4096, "2gb": 2 << 30, "1T": 1 << 40} {
		if got, err := eval.ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "G", "-1G", "0", "lots", "1e30T"} {
		if _, err := eval.ParseSize(bad); err == nil || !strings.Contains(err.Error(), "8G") {
			t.Errorf("ParseSize(%q): want an error giving an example, got %v", bad, err)
		}
	}
}

// With a budget of one host's worth per process, discovery still finds
// every host, one nix process each.
func TestDiscoverWithinMemoryBudget(t *testing.T) {
	dir := t.TempDir()
	mustWrite(t, dir, fixture.Many("host", 6, nil))
	f, err := eval.Discover(context.Background(), runner(), eval.Options{Ref: dir, Jobs: 2, Memory: 2 * eval.PriorPerHost})
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Hosts) != 6 {
		t.Fatalf("discovered %d hosts, want 6", len(f.Hosts))
	}
}

// DrvPaths returns what a nix eval of each host's drvPath returns, and
// reports every host of a chunk that failed with the chunk's error (the
// builder then evaluates those alone).
func TestDrvPaths(t *testing.T) {
	dir := t.TempDir()
	mustWrite(t, dir, fixture.Many("host", 5, func(i int, h *fixture.Host) { h.Bento = &fixture.Bento{Enable: true} }))
	f, err := eval.Discover(context.Background(), runner(), eval.Options{Ref: dir})
	if err != nil {
		t.Fatal(err)
	}
	hosts := f.Hosts
	ghost := hosts[0]
	ghost.Name, ghost.Attr = "ghost", fleet.ConfigAttr("ghost")
	// Sorted: host-1 host-2 | host-3 host-4 | host-5 ghost
	hosts = append(hosts, ghost)
	var mu sync.Mutex
	found := map[string]string{}
	failed := map[string]error{}
	err = eval.DrvPaths(context.Background(), runner(), hosts, eval.Options{Jobs: 2, ChunkSize: 2},
		func(h, drv string) { mu.Lock(); found[h] = drv; mu.Unlock() },
		func(h string, err error) { mu.Lock(); failed[h] = err; mu.Unlock() })
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 4 || len(failed) != 2 {
		t.Fatalf("found %v, failed %v: want 4 found, the last chunk (host-5, ghost) failed", found, failed)
	}
	if e := failed["ghost"]; e == nil || !strings.Contains(e.Error(), "ghost") {
		t.Errorf("ghost: error %v, want Nix's message naming the attribute", e)
	}
	for _, h := range hosts[:4] {
		out, err := runner().Output(context.Background(), h.Name, append([]string{"eval", "--raw"}, h.Installable(eval.ToplevelDrv)...)...)
		if err != nil {
			t.Fatal(err)
		}
		if found[h.Name] != string(out) {
			t.Errorf("host %s: DrvPaths %q, nix eval %q", h.Name, found[h.Name], out)
		}
		if _, err := os.Stat(found[h.Name]); err != nil {
			t.Errorf("host %s: the derivation was not instantiated: %v", h.Name, err)
		}
	}
}

// Discovery can instantiate the systems of the hosts bento deploys in its
// own processes; a system that does not evaluate leaves its host
// discovered, without a derivation (its build then reports the error).
func TestDiscoverWithDrvPaths(t *testing.T) {
	dir := t.TempDir()
	flake := `{
  outputs = { self }: let
    sys = "` + fixture.NixSystem() + `";
    host = name: toplevel: enable: {
      config = {
        networking.hostName = name;
        nixpkgs.hostPlatform.system = sys;
        services.bento = { inherit enable; };
        system.build.toplevel = toplevel;
      };
    };
    drv = name: derivation { inherit name; system = sys; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; };
  in {
    nixosConfigurations = {
      good = host "good" (drv "good") true;
      off = host "off" (drv "off") false;
      broken = host "broken" (throw "the system of broken does not evaluate") true;
    };
  };
}
`
	write(t, dir, "flake.nix", flake)
	for _, chunk := range []int{0, 1} {
		var mu sync.Mutex
		drvs := map[string]string{}
		f, err := eval.Discover(context.Background(), runner(), eval.Options{Ref: dir, ChunkSize: chunk,
			DrvPath: func(h, drv string) { mu.Lock(); drvs[h] = drv; mu.Unlock() }})
		if err != nil {
			t.Fatalf("chunk %d: %v", chunk, err)
		}
		if len(f.Hosts) != 3 {
			t.Fatalf("chunk %d: discovered %d hosts, want 3", chunk, len(f.Hosts))
		}
		if _, ok := drvs["off"]; ok {
			t.Errorf("chunk %d: a disabled host was instantiated", chunk)
		}
		if _, ok := drvs["broken"]; ok {
			t.Errorf("chunk %d: broken has a derivation", chunk)
		}
		if chunk == 1 {
			if d := drvs["good"]; !strings.HasSuffix(d, "-good.drv") {
				t.Errorf("good: drv %q", d)
			} else if _, err := os.Stat(d); err != nil {
				t.Errorf("good: %s not instantiated: %v", d, err)
			}
		}
	}
}

func TestDiscoverClassicWithDrvPaths(t *testing.T) {
	dir := t.TempDir()
	if err := fixture.Write(dir, fixture.Fleet{Classic: true, Hosts: []fixture.Host{
		{Name: "alpha", Bento: &fixture.Bento{Enable: true}},
		{Name: "off", Bento: &fixture.Bento{Enable: false}},
	}}); err != nil {
		t.Fatal(err)
	}
	r := runner()
	r.Env = append(r.Env, "NIX_PATH="+fixture.ClassicNixPath(dir))
	var mu sync.Mutex
	drvs := map[string]string{}
	f, err := eval.Discover(context.Background(), r, eval.Options{Ref: dir, DrvPath: func(h, d string) { mu.Lock(); drvs[h] = d; mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Hosts) != 2 || len(drvs) != 1 || !strings.HasSuffix(drvs["alpha"], ".drv") {
		t.Fatalf("hosts %d, drvs %v: want alpha's derivation only", len(f.Hosts), drvs)
	}
}
