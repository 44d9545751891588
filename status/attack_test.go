package status

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
)

// attackFlake writes, inside the host's reports/, a directory shaped like a
// store path that holds a flake whose evaluation leaves marker in the store.
func attackFlake(t *testing.T, c chroot, marker string) string {
	t.Helper()
	dir := filepath.Join(hostDir(c.root, "alpha"), manifest.ReportsDir, "0123456789abcdfghijklmnpqrsvwxyz-nixos-system-alpha")
	flake := fmt.Sprintf(`{
  description = builtins.seq (builtins.toFile %[1]q "x") "attack";
  outputs = _: builtins.seq (builtins.toFile %[1]q "x") {};
}
`, marker)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte(flake), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func markerInStore(t *testing.T, storeDir, marker string) bool {
	m, _ := filepath.Glob(filepath.Join(storeDir, "*-"+marker))
	return len(m) > 0
}

// The attack of issue 12: a host reports a flake it wrote as its current
// system; bento diff must refuse it and Nix must evaluate nothing.
func TestDiffRefusesAFlakeTheHostWrote(t *testing.T) {
	if _, err := exec.LookPath("nix"); err != nil {
		t.Skip("nix is not installed")
	}
	r := &nix.Runner{Env: fixture.Env()}
	ctx := context.Background()
	storeDir, err := StoreDir(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	cur := buildFixture(t, r, t.TempDir(), "1", "1")
	c := newChroot(t)
	c.publish("alpha", v2, now, cur)
	marker := fmt.Sprintf("bento-attack-marker-%d", time.Now().UnixNano())
	evil := attackFlake(t, c, marker)
	c.report("alpha", applied(v2, evil, now.Add(-time.Minute)))

	// status shows the host unreadable, without the path.
	snap, err := Collect(ctx, Options{Root: c.root, Now: now, StoreDir: storeDir})
	if err != nil {
		t.Fatal(err)
	}
	row := rowsByHost(snap)["alpha"]
	if row.State != Unreadable || !strings.Contains(row.Message, InvalidSystem) || !row.InvalidSystem || row.System != "" {
		t.Errorf("status row %+v, want unreadable with %q", row, InvalidSystem)
	}
	// The snapshot (what bento status --json prints; status/render tests
	// the gauge) flags the host without the path.
	js, err := json.MarshalIndent(snap, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(js), evil) || !strings.Contains(string(js), `"invalidSystem": true`) {
		t.Errorf("JSON shows the path or lacks invalidSystem: %s", js)
	}

	// diff refuses, both through DiffTargets and Diff itself.
	d, err := DiffTargets(c.root, "alpha", &Build{OutPath: cur}, false)
	if err == nil {
		err = Diff(ctx, r, d, &bytes.Buffer{})
	}
	if err == nil || !errors.Is(err, ErrInvalidSystem) {
		t.Errorf("diff: %v, want %q", err, InvalidSystem)
	}
	// Even sides built by hand do not reach nix.
	err = Diff(ctx, r, DiffSides{Host: "alpha", From: evil, To: cur}, &bytes.Buffer{})
	if !errors.Is(err, ErrInvalidSystem) {
		t.Errorf("Diff of a host-written directory: %v, want %q", err, InvalidSystem)
	}
	if markerInStore(t, storeDir, marker) {
		t.Fatalf("Nix evaluated the host's flake: %s is in the store", marker)
	}
}

func TestCheckStorePath(t *testing.T) {
	h := "0123456789abcdfghijklmnpqrsvwxyz"
	for _, tc := range []struct {
		p  string
		ok bool
	}{
		{"/nix/store/" + h + "-nixos-system-a", true},
		{"/nix/store/" + h + "-nixos-system-a/bin", false},
		{"/nix/store/../store/" + h + "-x", false},
		{"/srv/chroots/alpha/reports/" + h + "-x", false},
		{"/nix/store/" + strings.ToUpper(h) + "-x", false},
		{"/nix/store/" + h + "-x\x1b]0;t\x07", false},
		{"-/nix/store/" + h + "-x", false},
		{"nix/store/" + h + "-x", false},
		{"/nix/store/" + h + "-", false},
		{"", false},
	} {
		err := CheckStorePath("/nix/store", tc.p)
		if (err == nil) != tc.ok {
			t.Errorf("CheckStorePath(%q) = %v, want ok %v", tc.p, err, tc.ok)
		}
	}
}
