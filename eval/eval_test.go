package eval_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/bento-nix/bento/eval"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/nix"
)

func runner() *nix.Runner { return &nix.Runner{Env: fixture.Env()} }

func sampleHosts() []fixture.Host {
	return []fixture.Host{
		{Name: "alpha", Bento: &fixture.Bento{Enable: true, Tags: []string{"web", "eu"}, User: "alpha-sftp", Server: "bento.example.org"}},
		{Name: "beta", Bento: &fixture.Bento{Enable: true, Mode: "fetch", Operation: "boot", Wave: new(0)}},
		{Name: "pi.home", Bento: &fixture.Bento{Enable: true, Tags: []string{"pi"}}},
		{Name: "off", Bento: &fixture.Bento{Enable: false}},
		{Name: "plain"},
	}
}

func TestDiscover(t *testing.T) {
	for _, layout := range []struct {
		name    string
		classic bool
	}{{"flake", false}, {"classic", true}} {
		t.Run(layout.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := fixture.Write(dir, fixture.Fleet{Hosts: sampleHosts(), Classic: layout.classic}); err != nil {
				t.Fatal(err)
			}
			r := runner()
			if layout.classic {
				r.Env = append(r.Env, "NIX_PATH="+fixture.ClassicNixPath(dir))
			}
			f, err := eval.Discover(context.Background(), r, eval.Options{Ref: dir, ChunkSize: 2})
			if err != nil {
				t.Fatal(err)
			}
			want := []struct {
				name, state, user, mode, op, tags, server, wave string
			}{
				{"alpha", "managed", "alpha-sftp", "build", "switch", "web,eu", "bento.example.org", "1"},
				{"beta", "managed", "beta", "fetch", "boot", "", "", "0"},
				{"off", "disabled", "off", "build", "switch", "", "", "1"},
				{"pi.home", "managed", "pi.home", "build", "switch", "pi", "", "1"},
				{"plain", "not-managed", "plain", "build", "switch", "", "", "1"},
			}
			if len(f.Hosts) != len(want) {
				t.Fatalf("got %d hosts, want %d: %+v", len(f.Hosts), len(want), f.Hosts)
			}
			for i, w := range want {
				h := f.Hosts[i]
				got := []string{h.Name, h.State(), h.Options.User, h.Options.Mode, h.Options.Operation, strings.Join(h.Options.Tags, ","), h.Options.Server, strconv.Itoa(h.Options.Wave)}
				exp := []string{w.name, w.state, w.user, w.mode, w.op, w.tags, w.server, w.wave}
				if strings.Join(got, "|") != strings.Join(exp, "|") {
					t.Errorf("host %d: got %v, want %v", i, got, exp)
				}
				if h.System != fixture.NixSystem() {
					t.Errorf("host %s: system %q, want %q", h.Name, h.System, fixture.NixSystem())
				}
			}
			if want := fleet.LayoutFlake; !layout.classic && f.Layout != want {
				t.Errorf("layout %s, want %s", f.Layout, want)
			}
			if layout.classic && f.Layout != fleet.LayoutClassic {
				t.Errorf("layout %s, want classic", f.Layout)
			}
		})
	}
}

// The installable of a dotted host name must build: quoting is right.
func TestInstallableQuotesDottedNames(t *testing.T) {
	dir := t.TempDir()
	if err := fixture.Write(dir, fixture.Fleet{Hosts: sampleHosts()}); err != nil {
		t.Fatal(err)
	}
	r := runner()
	f, err := eval.Discover(context.Background(), r, eval.Options{Ref: dir})
	if err != nil {
		t.Fatal(err)
	}
	h, ok := lookup(f, "pi.home")
	if !ok {
		t.Fatalf("pi.home not discovered: %+v", f.Hosts)
	}
	args := append([]string{"eval", "--raw"}, h.Installable("config.networking.hostName")...)
	out, err := r.Output(context.Background(), h.Name, args...)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "pi.home" {
		t.Fatalf("hostName = %q", out)
	}
}

func TestDiscoverErrors(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T, dir string) *nix.Runner
		want  []string
	}{
		{
			name:  "no flake and no hosts",
			setup: func(t *testing.T, dir string) *nix.Runner { return runner() },
			want:  []string{"no flake.nix and no hosts/<name>/configuration.nix", "--flake"},
		},
		{
			name: "flake without nixosConfigurations",
			setup: func(t *testing.T, dir string) *nix.Runner {
				write(t, dir, "flake.nix", `{ outputs = { self }: { }; }`)
				return runner()
			},
			want: []string{"no nixosConfigurations output", "nixosConfigurations.<host>"},
		},
		{
			name: "evaluation error names the host",
			setup: func(t *testing.T, dir string) *nix.Runner {
				hs := sampleHosts()
				hs[1].FailEval = true
				mustWrite(t, dir, hs)
				return runner()
			},
			want: []string{"host beta: evaluation failed", "fixture: evaluation of beta fails on purpose"},
		},
		{
			name: "invalid host name",
			setup: func(t *testing.T, dir string) *nix.Runner {
				mustWrite(t, dir, append(sampleHosts(), fixture.Host{Name: "-evil", Bento: &fixture.Bento{Enable: true}}))
				return runner()
			},
			want: []string{`invalid host name "-evil"`, "rename"},
		},
		{
			name: "nix not installed",
			setup: func(t *testing.T, dir string) *nix.Runner {
				mustWrite(t, dir, sampleHosts())
				return &nix.Runner{Bin: "/nonexistent/nix", Env: fixture.Env()}
			},
			want: []string{"nix is not installed", "apt-get install nix-bin"},
		},
		{
			name: "flakes not enabled",
			setup: func(t *testing.T, dir string) *nix.Runner {
				mustWrite(t, dir, sampleHosts())
				return &nix.Runner{Env: []string{"NIX_CONFIG=experimental-features =\nsandbox = false\n"}}
			},
			want: []string{"experimental-features = nix-command flakes"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			r := tc.setup(t, dir)
			_, err := eval.Discover(context.Background(), r, eval.Options{Ref: dir})
			if err == nil {
				t.Fatal("Discover succeeded, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestKeepGoingReturnsTheOtherHosts(t *testing.T) {
	dir := t.TempDir()
	hs := sampleHosts()
	hs[2].FailEval = true // pi.home
	mustWrite(t, dir, hs)
	f, err := eval.Discover(context.Background(), runner(), eval.Options{Ref: dir, KeepGoing: true, ChunkSize: 10})
	var herrs eval.HostErrors
	if !errors.As(err, &herrs) || len(herrs) != 1 || herrs[0].Host != "pi.home" {
		t.Fatalf("want one HostError for pi.home, got %v", err)
	}
	if f == nil || len(f.Hosts) != 4 {
		t.Fatalf("want the 4 other hosts, got %+v", f)
	}
	if _, ok := lookup(f, "pi.home"); ok {
		t.Error("failed host is listed as discovered")
	}
}

func write(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, dir string, hs []fixture.Host) {
	t.Helper()
	if err := fixture.Write(dir, fixture.Fleet{Hosts: hs}); err != nil {
		t.Fatal(err)
	}
}

func TestUntrackedFlakeIsExplained(t *testing.T) {
	dir := t.TempDir()
	mustWrite(t, dir, sampleHosts())
	if err := fixture.Write(dir, fixture.Fleet{Hosts: sampleHosts(), Git: true}); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub")
	mustWrite(t, sub, sampleHosts()) // inside the repository, never added
	_, err := eval.Discover(context.Background(), runner(), eval.Options{Ref: sub})
	if err == nil || !strings.Contains(err.Error(), "git add flake.nix") {
		t.Fatalf("want an error saying to git add flake.nix, got %v", err)
	}
	if _, err := eval.Discover(context.Background(), runner(), eval.Options{Ref: dir}); err != nil {
		t.Fatalf("committed fleet: %v", err)
	}
}

// A host whose agent calls itself by another name than its attribute would
// refuse every publication: discovery refuses it, naming both names and
// the one-line fix. A dotted attribute cannot be a NixOS hostName, so
// such a host needs services.bento.host; with it, it is fine.
func TestAgentHostMustBeTheAttributeName(t *testing.T) {
	hosts := []fixture.Host{
		{Name: "web-1", HostName: "web", Bento: &fixture.Bento{Enable: true, Host: "web"}},
		{Name: "pi.home", HostName: "pi", Bento: &fixture.Bento{Enable: true}},
		{Name: "db.eu", HostName: "db", Bento: &fixture.Bento{Enable: true, Host: "db.eu"}},
		{Name: "mail-1", HostName: "mail", Bento: &fixture.Bento{Enable: true, Host: "mail-1"}},
		{Name: "off-1", HostName: "off", Bento: &fixture.Bento{Enable: false, Host: "off"}},
		{Name: "plain-1", HostName: "plain"},
	}
	dir := t.TempDir()
	mustWrite(t, dir, hosts)
	_, err := eval.Discover(context.Background(), runner(), eval.Options{Ref: dir})
	for _, w := range []string{
		`host web-1: services.bento.host is "web", but bento publishes this host as nixosConfigurations.web-1, so its agent would refuse every publication: add services.bento.host = "web-1"; to the host's configuration`,
		`host pi.home: services.bento.host is "pi", but bento publishes this host as nixosConfigurations."pi.home", so its agent would refuse every publication: add services.bento.host = "pi.home"; to the host's configuration`,
	} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("Discover error %v\nwant it to contain %q", err, w)
		}
	}
	f, err := eval.Discover(context.Background(), runner(), eval.Options{Ref: dir, KeepGoing: true})
	var herrs eval.HostErrors
	if !errors.As(err, &herrs) || len(herrs) != 2 {
		t.Fatalf("want two HostErrors, got %v", err)
	}
	var names []string
	for _, h := range f.Hosts {
		names = append(names, h.Name+"="+h.Options.Host)
	}
	// Disabled and unmanaged hosts are not published, so their names do not matter.
	if got, want := strings.Join(names, " "), "db.eu=db.eu mail-1=mail-1 off-1=off plain-1="; got != want {
		t.Errorf("discovered %s, want %s", got, want)
	}
}

func lookup(f *fleet.Fleet, name string) (fleet.Host, bool) {
	i := slices.IndexFunc(f.Hosts, func(h fleet.Host) bool { return h.Name == name })
	if i < 0 {
		return fleet.Host{}, false
	}
	return f.Hosts[i], true
}

// A git work tree that git cannot read stops discovery with git's own
// message, before Nix gives a vaguer one.
func TestUnreadableGitIsReported(t *testing.T) {
	dir := t.TempDir()
	mustWrite(t, dir, sampleHosts())
	if err := os.WriteFile(filepath.Join(dir, ".git"), []byte("gitdir: /nonexistent\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := eval.Discover(context.Background(), runner(), eval.Options{Ref: dir})
	if err == nil || !strings.Contains(err.Error(), "rev-parse --show-toplevel exited with status 128") {
		t.Fatalf("want git's failure, got %v", err)
	}
}
