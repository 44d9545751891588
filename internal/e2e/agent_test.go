package e2e

import (
	"os"
	"strings"
	"testing"

	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	RemoveBinary()
	os.Exit(code)
}

func hostsFleet(names ...string) fixture.Fleet {
	var f fixture.Fleet
	for _, n := range names {
		f.Hosts = append(f.Hosts, fixture.Host{Name: n, Bento: &fixture.Bento{Enable: true}})
	}
	return f
}

func TestHappyPathThenNothingChanged(t *testing.T) {
	e := Start(t, hostsFleet("alpha", "beta"))
	pub := e.Publish(t)
	for _, name := range []string{"alpha", "beta"} {
		h := e.Host(t, name)
		res := h.Run(t)
		if res.ExitCode != 0 {
			t.Fatalf("%s: exit %d", name, res.ExitCode)
		}
		want := pub[name].Built
		if got := h.ProfileTarget(t); got != want {
			t.Errorf("%s: profile -> %q, want the published system %q", name, got, want)
		}
		if got := h.Current(t); got != want {
			t.Errorf("%s: current-system -> %q, want %q", name, got, want)
		}
		if sw := h.Switches(t); len(sw) != 1 || sw[0] != want+" switch" {
			t.Errorf("%s: switch-to-configuration calls %q, want one %q", name, sw, want+" switch")
		}
		st := h.Status(t)
		if st == nil {
			t.Fatalf("%s: no status.json uploaded", name)
		}
		v := pub[name].Version
		if st.Host != name || st.AppliedVersion != v || st.SeenVersion != v || st.Stage != manifest.StageConfirmed ||
			st.Result != manifest.ResultSuccess || st.ActualToplevel != want || st.CurrentSystem != want ||
			st.Reproducible == nil || !*st.Reproducible || st.Error != "" {
			t.Errorf("%s: status.json %+v", name, st)
		}
		log := h.Log(t, st.Log)
		for _, line := range []string{"built " + want, "switch-to-configuration switch for " + name, "confirmed"} {
			if !strings.Contains(log, line) {
				t.Errorf("%s: uploaded log lacks %q:\n%s", name, line, log)
			}
		}
	}

	// Nothing changed: no download, no build, no switch; a fresh report.
	h := e.Host(t, "alpha")
	before := h.Status(t)
	res := h.Run(t)
	if res.ExitCode != 0 || !strings.Contains(res.Output(), "up to date") {
		t.Fatalf("idle tick: exit %d, output %q", res.ExitCode, res.Output())
	}
	if strings.Contains(res.Output(), "building") || strings.Contains(res.Output(), "fetched") {
		t.Errorf("idle tick fetched or built:\n%s", res.Output())
	}
	if sw := h.Switches(t); len(sw) != 1 {
		t.Errorf("idle tick switched again: %q", sw)
	}
	st := h.Status(t)
	if st.Result != manifest.ResultUnchanged || st.AppliedVersion != before.AppliedVersion || st.Log != before.Log || !st.FinishedAt.After(before.FinishedAt) && !st.FinishedAt.Equal(before.FinishedAt) {
		t.Errorf("idle report %+v", st)
	}
}
