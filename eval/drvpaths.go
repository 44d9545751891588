package eval

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/tidwall/gjson"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/nix"
)

// ToplevelDrv is the attribute, below a host's configuration, whose
// drvPath DrvPaths evaluates.
const ToplevelDrv = "config.system.build.toplevel.drvPath"

// DrvPaths instantiates the system (config.system.build.toplevel) of many
// hosts in chunked nix eval --json --apply processes, sized as discovery
// sizes its chunks (opts.ChunkSize, opts.Memory, opts.Jobs), instead of
// one nix process per host, which re-loads the flake and nixpkgs each time.
//
// found is called with each host's .drv path as soon as its chunk ends,
// failed with each host of a chunk that did not evaluate and the chunk's
// error; both from several goroutines. A failed host is not retried alone
// here: the caller does that with its own log (the builder evaluates it in
// its own process, whose output goes to the host's build log). Hosts that
// cannot share a chunk (different flakes) are evaluated in chunks of their
// own flake. The error is only the context's.
func DrvPaths(ctx context.Context, r *nix.Runner, hosts []fleet.Host, opts Options, found func(host, drv string), failed func(host string, err error)) error {
	groups := groupByFlake(hosts, failed)
	// A failed chunk is not split here, so the chunk errors do not stop
	// the other chunks: KeepGoing.
	opts.KeepGoing = true
	for _, g := range groups {
		if err := g.eval(ctx, r, opts, found, failed); err != nil {
			return err
		}
	}
	return nil
}

// drvGroup is the hosts of one flake (or classic directory): one chunk is
// one nix process over one flake's nixosConfigurations.
type drvGroup struct {
	layout fleet.Layout
	ref    string
	names  []string
	byName map[string]fleet.Host
}

// groupByFlake groups hosts by flake, in the order they come; a host that
// cannot be evaluated this way goes to failed.
func groupByFlake(hosts []fleet.Host, failed func(host string, err error)) []*drvGroup {
	var groups []*drvGroup
	index := map[string]*drvGroup{}
	for _, h := range hosts {
		if err := fleet.ValidateName(h.Name); err != nil {
			failed(h.Name, err)
			continue
		}
		if h.Layout != fleet.LayoutClassic && h.Attr != fleet.ConfigAttr(h.Name) {
			failed(h.Name, fmt.Errorf("attribute %s is not nixosConfigurations.<name>", h.Attr))
			continue
		}
		key := string(h.Layout) + "\x00" + h.Ref
		g := index[key]
		if g == nil {
			g = &drvGroup{layout: h.Layout, ref: h.Ref, byName: map[string]fleet.Host{}}
			index[key] = g
			groups = append(groups, g)
		}
		g.names = append(g.names, h.Name)
		g.byName[h.Name] = h
	}
	return groups
}

// eval instantiates the group's hosts in chunks (see DrvPaths). The error
// is only the context's.
func (g *drvGroup) eval(ctx context.Context, r *nix.Runner, opts Options, found func(host, drv string), failed func(host string, err error)) error {
	errs := forEachChunk(ctx, g.names, opts, false,
		func(ctx context.Context, chunk []string, rss *int64) (map[string]gjson.Result, error) {
			return runChunk(ctx, r, chunk, drvArgs(g.layout, g.ref, chunk, g.byName), rss)
		},
		func(name string, v gjson.Result) {
			drv := v.String()
			if v.Type != gjson.String || !strings.HasPrefix(drv, "/") || !strings.HasSuffix(drv, ".drv") {
				failed(name, fmt.Errorf("%s is not a derivation: nix eval printed %q", ToplevelDrv, truncate(v.Raw, 200)))
				return
			}
			found(name, drv)
		})
	for _, e := range errs {
		if e.Host == "*" {
			return e.Err
		}
		failed(e.Host, e.Err)
	}
	return ctx.Err()
}

func drvArgs(layout fleet.Layout, ref string, names []string, byName map[string]fleet.Host) []string {
	// The evaluation cache is one SQLite database per flake that
	// concurrent processes fight over, and --apply does not use it anyway.
	if layout == fleet.LayoutClassic {
		var list strings.Builder
		for _, n := range names {
			p := byName[n].ClassicConfig
			if p == "" {
				p = filepath.Join(ref, "hosts", n, "configuration.nix")
			}
			fmt.Fprintf(&list, "{ name = %q; path = (/. + %s); } ", n, nixString(p))
		}
		expr := fmt.Sprintf("builtins.listToAttrs (map (p: { name = p.name; value = (import <nixpkgs/nixos> { configuration = p.path; }).%s; }) [ %s])", ToplevelDrv, list.String())
		return []string{"eval", "--json", "--no-eval-cache", "--impure", "--expr", expr}
	}
	apply := fmt.Sprintf("cs: builtins.listToAttrs (map (n: { name = n; value = cs.${n}.%s; }) [ %s])", ToplevelDrv, nixNames(names))
	return []string{"eval", "--json", "--no-eval-cache", ref + "#nixosConfigurations", "--apply", apply}
}

// nixString quotes s as a Nix string literal: unlike Go's %q, it escapes
// "${", which Nix would otherwise interpolate.
func nixString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "${", `\${`)
	return `"` + r.Replace(s) + `"`
}
