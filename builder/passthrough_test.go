package builder_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/nix"
)

// TestBuildersAndMaxJobsReachNix runs Nix with max-jobs = 0 (no local
// builds), so a build can only happen where bento's own flags send it:
// --builders to a machine that does not exist fails naming that machine,
// and --max-jobs 1 builds locally.
func TestBuildersAndMaxJobsReachNix(t *testing.T) {
	r := &nix.Runner{Env: []string{"NIX_CONFIG=" + fixture.NixConfig + "max-jobs = 0\n"}}
	gen := nonce(t)
	hosts := writeFleet(t, r, fixture.Fleet{Hosts: []fixture.Host{
		{Name: "alpha", Bento: &fixture.Bento{Enable: true}, Generation: gen},
	}})
	system := hosts[0].System
	if system == "" {
		t.Fatal("discovery gave no system for the fixture host")
	}

	builders := "ssh://nobody@bento-no-such-builder.invalid " + system
	results, err := builder.Build(context.Background(), r, hosts, builder.Options{Jobs: 1, StateDir: t.TempDir(), Builders: builders})
	if err != nil {
		t.Fatal(err)
	}
	res := results[0]
	if res.Status != builder.StatusFailed {
		t.Fatalf("with max-jobs = 0 and an unreachable builder: status %s, want failed", res.Status)
	}
	log, err := os.ReadFile(res.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "cannot build on 'ssh://nobody@bento-no-such-builder.invalid'") {
		t.Errorf("Nix did not try the builder given with Builders; log:\n%s", log)
	}
	// bento's closing note is marked line by line, so a log's tail (Nix's
	// lines only) never repeats the end of a multi-line error.
	_, note, ok := strings.Cut(string(log), "\nbento: build: ")
	if !ok {
		t.Fatalf("log lacks bento's build note:\n%s", log)
	}
	for _, l := range strings.Split(strings.TrimRight(note, "\n"), "\n")[1:] {
		if !strings.HasPrefix(l, "bento: ") {
			t.Errorf("a line of bento's note is not marked as bento's: %q", l)
		}
	}

	results, err = builder.Build(context.Background(), r, hosts, builder.Options{Jobs: 1, StateDir: t.TempDir(), MaxJobs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res := results[0]; !res.OK() || res.OutPath == "" {
		t.Errorf("MaxJobs 1 over max-jobs = 0: status %s, err %v; want built", res.Status, res.Err)
	}
}
