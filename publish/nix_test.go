package publish_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/eval"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/nix"
	"github.com/bento-nix/bento/publish"
)

// What a host downloads is enough to build its system, and the same one
// the server built: the published copy evaluates to the same toplevel as
// the fleet it came from (the client's reproducibility check).
func TestPublishedTreeEvaluatesToSameSystem(t *testing.T) {
	for _, classic := range []bool{false, true} {
		name := "flake"
		if classic {
			name = "classic"
		}
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "fleet")
			err := fixture.Write(dir, fixture.Fleet{Classic: classic, Git: !classic, Hosts: []fixture.Host{
				{Name: "alpha", Bento: &fixture.Bento{Enable: true, User: "nobody"}, Generation: "7"},
				{Name: "pi.home", Bento: &fixture.Bento{Enable: true, User: "nobody"}},
			}})
			if err != nil {
				t.Fatal(err)
			}
			r := &nix.Runner{Env: fixture.Env()}
			if classic {
				r.Env = append(r.Env, "NIX_PATH="+fixture.ClassicNixPath(dir))
			}
			ctx := context.Background()
			f, err := eval.Discover(ctx, r, eval.Options{Ref: dir})
			if err != nil {
				t.Fatal(err)
			}
			var ts []publish.Target
			want := map[string]string{}
			for _, h := range f.Hosts {
				src, err := publish.SourceFor(h, f.Dir)
				if err != nil {
					t.Fatal(err)
				}
				out := outPath(t, r, h.Installable("config.system.build.toplevel.outPath"))
				want[h.Name] = out
				ts = append(ts, publish.Target{Host: h, Source: src, ExpectedToplevel: out})
			}
			root := filepath.Join(t.TempDir(), "chroot")
			mustOK(t, deploy(t, root, ts), publish.StatusPublished)

			for _, h := range f.Hosts {
				m := verify(t, root, h.Name)
				pub := materialise(t, root, h.Name, m)
				var args []string
				if classic {
					// The client builds configuration.nix at the root of its copy.
					args = fleet.Host{Layout: fleet.LayoutClassic, ClassicConfig: filepath.Join(pub, "configuration.nix")}.Installable("config.system.build.toplevel.outPath")
				} else {
					args = []string{"path:" + pub + "#" + m.Flake.Attr + ".config.system.build.toplevel.outPath", "--no-write-lock-file"}
				}
				got := outPath(t, r, args)
				if got != want[h.Name] || m.ExpectedToplevel != got {
					t.Errorf("%s: the published copy evaluates to %s, the fleet to %s (manifest says %s)", h.Name, got, want[h.Name], m.ExpectedToplevel)
				}
			}
		})
	}
}

func outPath(t *testing.T, r *nix.Runner, installable []string) string {
	t.Helper()
	out, err := r.Output(context.Background(), "", append([]string{"eval", "--raw"}, installable...)...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}
