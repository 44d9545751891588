package builder_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/eval"
	"github.com/bento-nix/bento/internal/fixture"
)

// barrierFleet writes a NixOS-shaped flake whose hosts' builds each drop a
// file into barrier and then wait, up to two minutes (build users may be
// busy with other builds), until want files are there: the builds succeed
// only if want of them run at the same time.
func barrierFleet(t *testing.T, hosts int, barrier string, want int, gen string) string {
	t.Helper()
	dir := t.TempDir()
	flake := fmt.Sprintf(`{
  outputs = { self }:
    let
      mk = name: {
        config.services.bento.enable = true;
        config.system.build.toplevel = derivation {
          name = "nixos-system-${name}-%s";
          system = %q;
          builder = "/bin/sh";
          args = [ "-c" ''
            /bin/touch %s/${name}
            i=0
            while set -- %s/*; [ $# -lt %d ]; do
              i=$((i + 1))
              if [ $i -gt 1200 ]; then echo "only $# builds ran at once: $*" >&2; exit 1; fi
              /bin/sleep 0.1
            done
            /bin/mkdir $out
          '' ];
        };
      };
    in {
      nixosConfigurations = builtins.listToAttrs (map (i: { name = "host-${toString i}"; value = mk "host-${toString i}"; }) (builtins.genList (i: i) %d));
    };
}
`, gen, fixture.NixSystem(), barrier, barrier, want, hosts)
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte(flake), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// concurrency is a Progress that tracks how many hosts build at once.
type concurrency struct {
	mu            sync.Mutex
	building, max int
}

func (c *concurrency) Begin([]string)  {}
func (c *concurrency) Log(_, _ string) {}
func (c *concurrency) End()            {}
func (c *concurrency) Phase(_ string, p builder.Phase) {
	if p != builder.PhaseBuilding {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.building++
	c.max = max(c.max, c.building)
}
func (c *concurrency) Done(r builder.Result) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r.Status == builder.StatusBuilt || r.Status == builder.StatusFailed {
		c.building--
	}
}

// TestJobsRunConcurrently shows that --jobs N really builds N hosts at
// once (their builds wait for each other: fewer at once and they fail)
// and never more than N.
func TestJobsRunConcurrently(t *testing.T) {
	const jobs, hosts = 3, 5
	// Build users must be able to write there: not under t.TempDir (0700).
	barrier, err := os.MkdirTemp("", "bento-barrier-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(barrier) })
	if err := os.Chmod(barrier, 0o777); err != nil {
		t.Fatal(err)
	}
	r := runner()
	dir := barrierFleet(t, hosts, barrier, jobs, nonce(t))
	fl, err := eval.Discover(context.Background(), r, eval.Options{Ref: dir})
	if err != nil {
		t.Fatal(err)
	}
	c := &concurrency{}
	results, err := builder.Build(context.Background(), r, fl.Hosts, builder.Options{Jobs: jobs, StateDir: t.TempDir(), Progress: c})
	if err != nil {
		t.Fatal(err)
	}
	for _, res := range results {
		if !res.OK() {
			log, _ := os.ReadFile(res.LogFile)
			t.Errorf("%s: %s: %v\n%s", res.Host, res.Status, res.Err, log)
		}
	}
	if c.max > jobs {
		t.Errorf("%d hosts built at once with Jobs %d", c.max, jobs)
	}
}
