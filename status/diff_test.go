package status

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/nix"
)

// buildFixture writes a one-host fleet into dir with the given kernel
// and generation, with real Nix, and returns its toplevel.
func buildFixture(t *testing.T, r *nix.Runner, dir, kernel, generation string) string {
	t.Helper()
	err := fixture.Write(dir, fixture.Fleet{Hosts: []fixture.Host{{
		Name: "alpha", Bento: &fixture.Bento{Enable: true}, Kernel: kernel, Generation: generation,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := fixture.BuildToplevels(context.Background(), r, dir, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	return m["alpha"]
}

func TestDiff(t *testing.T) {
	if _, err := exec.LookPath("nix"); err != nil {
		t.Skip("nix is not installed")
	}
	r := &nix.Runner{Env: fixture.Env()}
	dir := t.TempDir()
	// Different generations per run are not needed: diff-closures reads
	// what is in the store, built or cached.
	old := buildFixture(t, r, dir, "1", "1")
	cur := buildFixture(t, r, dir, "2", "2")

	c := newChroot(t)
	c.publish("alpha", v2, now, cur)
	rep := applied(v1, old, now.Add(-time.Minute))
	c.report("alpha", rep)

	d, err := DiffTargets(c.root, "alpha", &Build{OutPath: cur}, false)
	if err != nil {
		t.Fatal(err)
	}
	if d.From != old || d.To != cur || d.Same() {
		t.Fatalf("sides %+v, want %s → %s", d, old, cur)
	}
	var out bytes.Buffer
	if err := Diff(context.Background(), r, d, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "fixture-kernel: 1 → 2") {
		t.Errorf("diff-closures output %q does not show the kernel change", out.String())
	}

	// Without a build record, the manifest's expected system is the other side.
	d, err = DiffTargets(c.root, "alpha", nil, false)
	if err != nil || d.To != cur || d.ToLabel != "the published expected system" {
		t.Errorf("without a build record: %+v, %v", d, err)
	}
	// --previous compares the server's own two builds.
	d, err = DiffTargets(c.root, "alpha", &Build{OutPath: cur, Previous: old}, true)
	if err != nil || d.From != old || d.To != cur {
		t.Errorf("previous: %+v, %v", d, err)
	}
	// The host runs what the server built: both sides are the same.
	c.report("alpha", applied(v2, cur, now))
	if d, err := DiffTargets(c.root, "alpha", &Build{OutPath: cur}, false); err != nil || !d.Same() {
		t.Errorf("same system: %+v, %v", d, err)
	}

	missing := "/nix/store/00000000000000000000000000000000-nixos-system-alpha-9"
	tests := []struct {
		name     string
		setup    func()
		build    *Build
		previous bool
		err      string
	}{
		{"host built a system the server never had", func() { c.report("alpha", applied(v2, missing, now)) }, &Build{OutPath: cur}, false,
			"host alpha: the system host alpha reported, " + missing + ", is not in this machine's Nix store: the host built it itself"},
		{"server build garbage-collected", func() { c.report("alpha", applied(v2, old, now)) }, &Build{OutPath: missing}, false,
			"the server's last build, " + missing + ", is not in this machine's Nix store: it was garbage-collected here"},
		{"hostile path", func() { c.report("alpha", applied(v2, "--option build-hook /tmp/x", now)) }, &Build{OutPath: cur}, false,
			`invalid system reported by the host: "--option build-hook /tmp/x" is not an absolute store path`},
		{"no server build", func() {
			c.report("alpha", applied(v2, old, now))
			c.publish("alpha", v2, now, "")
		}, nil, false, "the server has not built it (no build record, no expected system in its manifest): bento build alpha"},
		{"no previous build", func() {}, &Build{OutPath: cur}, true, "the server has built it only once"},
		{"no report", func() { c.publish("beta", v1, now, cur) }, &Build{OutPath: cur}, false, "has not reported yet"},
		{"unknown host", func() {}, nil, false, "host nope: no chroot at"},
	}
	for _, tc := range tests {
		tc.setup()
		host := "alpha"
		switch tc.name {
		case "no report":
			host = "beta"
		case "unknown host":
			host = "nope"
		}
		_, err := DiffTargets(c.root, host, tc.build, tc.previous)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.err)
		}
	}
}
