// Package eval discovers a fleet: every nixosConfigurations.<host> of a
// flake (or every hosts/<name>/configuration.nix of the classic layout) and
// the services.bento options the server needs. It asks Nix for a JSON shape
// bento defines itself (nix eval --json --apply), never for the output of
// nix flake show, whose format changes between Nix versions.
package eval

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"

	"github.com/tidwall/gjson"
	"golang.org/x/sync/errgroup"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/nix"
)

// Options tune discovery.
type Options struct {
	// Ref is the flake reference or directory; "." when empty.
	Ref string
	// Jobs is how many nix eval processes run at once; NumCPU when 0.
	Jobs int
	// ChunkSize is how many hosts one nix eval process evaluates; 0 picks
	// a size that spreads the hosts evenly over Jobs, at most MaxChunk.
	ChunkSize int
	// KeepGoing returns the hosts that evaluated, plus a *HostErrors for the
	// others, instead of failing on the first host that does not evaluate.
	KeepGoing bool
}

// MaxChunk bounds the automatic chunk size: a nix process holding hundreds
// of NixOS evaluations uses gigabytes of memory.
const MaxChunk = 64

// HostError is one host that could not be discovered.
type HostError struct {
	Host string
	Err  error
}

func (e *HostError) Error() string { return fmt.Sprintf("host %s: %v", e.Host, e.Err) }
func (e *HostError) Unwrap() error { return e.Err }

// HostErrors lists every host that failed to evaluate.
type HostErrors []*HostError

func (es HostErrors) Error() string {
	var parts []string
	for _, e := range es {
		parts = append(parts, e.Error())
	}
	return strings.Join(parts, "\n")
}

// Discover evaluates the fleet at opts.Ref. With KeepGoing, a fleet is
// returned together with a HostErrors error when some hosts failed.
func Discover(ctx context.Context, r *nix.Runner, opts Options) (*fleet.Fleet, error) {
	ref := opts.Ref
	if ref == "" {
		ref = "."
	}
	f := &fleet.Fleet{Ref: ref, Layout: fleet.LayoutFlake}
	if dir, ok := localDir(ref); ok {
		if _, err := os.Stat(dir); err != nil {
			return nil, fmt.Errorf("fleet %s: %w", ref, err)
		}
		f.Dir = dir
		switch {
		case exists(filepath.Join(dir, "flake.nix")):
			if err := checkTracked(ctx, dir); err != nil {
				return nil, fmt.Errorf("fleet %s: %w", ref, err)
			}
			f.Ref = strings.TrimPrefix(dir, "path:")
			if strings.HasPrefix(ref, "path:") {
				f.Ref = "path:" + dir
			}
		case hasClassicHosts(dir):
			f.Layout = fleet.LayoutClassic
			f.Ref = dir
		default:
			return nil, fmt.Errorf("fleet %s: no flake.nix and no hosts/<name>/configuration.nix there; point --flake at your fleet's flake (or run bento init)", ref)
		}
	}

	names, err := listHosts(ctx, r, f)
	if err != nil {
		return nil, err
	}
	var errs HostErrors
	var valid []string
	for _, n := range names {
		if err := fleet.ValidateName(n); err != nil {
			errs = append(errs, &HostError{Host: n, Err: err})
			continue
		}
		valid = append(valid, n)
	}
	if len(errs) > 0 && !opts.KeepGoing {
		return nil, errs
	}

	hosts, evalErrs := evaluate(ctx, r, f, valid, opts)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	errs = append(errs, evalErrs...)
	hosts = slices.DeleteFunc(hosts, func(h fleet.Host) bool {
		if err := h.CheckAgentHost(); err != nil {
			errs = append(errs, &HostError{Host: h.Name, Err: err})
			return true
		}
		return false
	})
	sort.Slice(errs, func(i, j int) bool { return errs[i].Host < errs[j].Host })
	f.Hosts = hosts
	if len(errs) > 0 {
		if !opts.KeepGoing {
			return nil, errs
		}
		return f, errs
	}
	return f, nil
}

// localDir tells whether ref names a local directory, and which.
func localDir(ref string) (string, bool) {
	p := strings.TrimPrefix(ref, "path:")
	if strings.Contains(p, ":") || strings.Contains(p, "#") || strings.Contains(p, "?") {
		return "", false
	}
	if !(p == "." || p == ".." || strings.HasPrefix(p, "/") || strings.HasPrefix(p, "./") || strings.HasPrefix(p, "../") || !strings.Contains(p, ":")) {
		return "", false
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", false
	}
	return abs, true
}

// checkTracked refuses a flake.nix that git does not track: Nix copies only
// tracked files of a git repository, and its own message ("getting status
// of …: No such file or directory") does not say why.
func checkTracked(ctx context.Context, dir string) error {
	top, err := exec.CommandContext(ctx, "git", "-C", dir, "rev-parse", "--show-toplevel").Output()
	if err != nil {
		return nil // not a git work tree (or no git): Nix reads the directory as is
	}
	cmd := exec.CommandContext(ctx, "git", "-C", dir, "ls-files", "--error-unmatch", "flake.nix")
	if cmd.Run() != nil {
		return fmt.Errorf("flake.nix is not tracked by git in %s, and Nix sees only tracked files of a git repository: run git add flake.nix (and the files it imports)", strings.TrimSpace(string(top)))
	}
	return nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

func hasClassicHosts(dir string) bool {
	m, _ := filepath.Glob(filepath.Join(dir, "hosts", "*", "configuration.nix"))
	return len(m) > 0
}

func listHosts(ctx context.Context, r *nix.Runner, f *fleet.Fleet) ([]string, error) {
	if f.Layout == fleet.LayoutClassic {
		entries, err := os.ReadDir(filepath.Join(f.Dir, "hosts"))
		if err != nil {
			return nil, fmt.Errorf("fleet %s: %w", f.Ref, err)
		}
		var names []string
		for _, e := range entries {
			if exists(filepath.Join(f.Dir, "hosts", e.Name(), "configuration.nix")) {
				names = append(names, e.Name())
			}
		}
		return names, nil
	}
	out, err := r.Output(ctx, "", "eval", "--json", f.Ref+"#nixosConfigurations", "--apply", "builtins.attrNames")
	if err != nil {
		var ne *nix.Error
		if errors.As(err, &ne) && strings.Contains(ne.Message, "does not provide attribute") {
			return nil, fmt.Errorf("fleet %s: the flake has no nixosConfigurations output; add nixosConfigurations.<host> = nixpkgs.lib.nixosSystem { … } to its outputs", f.Ref)
		}
		return nil, fmt.Errorf("fleet %s: listing hosts: %w", f.Ref, err)
	}
	res := gjson.ParseBytes(out)
	if !res.IsArray() {
		return nil, fmt.Errorf("fleet %s: nixosConfigurations is not an attribute set of hosts", f.Ref)
	}
	var names []string
	for _, v := range res.Array() {
		names = append(names, v.String())
	}
	return names, nil
}

// hostInfo maps one evaluated configuration to the JSON shape bento reads.
// Hosts without the module get nulls, turned into defaults in Go. server and
// port go through tryEval: a module may declare them without defaults.
const hostInfo = `c:
  let
    cfg = c.config or { };
    b = cfg.services.bento or null;
    try = v: let r = builtins.tryEval (builtins.deepSeq v v); in if r.success then r.value else null;
    isStr = v: builtins.isString v;
  in {
    managed = b != null;
    enable = if b == null then false else (b.enable or false);
    hostName = try (cfg.networking.hostName or null);
    system = try (cfg.nixpkgs.hostPlatform.system or cfg.nixpkgs.system or c.pkgs.stdenv.hostPlatform.system or null);
    host = if b == null then null else try (b.host or null);
    user = if b == null then null else (b.user or null);
    server = if b == null then null else try (b.server or null);
    port = if b == null then null else try (b.port or null);
    mode = if b == null then null else (b.mode or null);
    operation = if b == null then null else (b.operation or null);
    interval = if b == null then null else try (b.interval or null);
    tags = if b == null then [ ] else (b.tags or [ ]);
    secrets = if b == null then [ ] else builtins.attrNames (b.secrets or { });
  }`

func evaluate(ctx context.Context, r *nix.Runner, f *fleet.Fleet, names []string, opts Options) ([]fleet.Host, HostErrors) {
	jobs := opts.Jobs
	if jobs <= 0 {
		jobs = runtime.NumCPU()
	}
	chunks := Chunks(names, opts.ChunkSize, jobs)
	results := make([][]fleet.Host, len(chunks))
	errsPer := make([]HostErrors, len(chunks))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	for i, chunk := range chunks {
		g.Go(func() error {
			hosts, err := evalChunk(gctx, r, f, chunk)
			if err == nil {
				results[i] = hosts
				return nil
			}
			if gctx.Err() != nil {
				return gctx.Err()
			}
			if len(chunk) == 1 {
				errsPer[i] = HostErrors{{Host: chunk[0], Err: hostCause(err)}}
				return nil
			}
			// Some host of the chunk does not evaluate: find which, one by
			// one, so the error names it and the others are still known.
			for _, n := range chunk {
				hs, err := evalChunk(gctx, r, f, []string{n})
				if err != nil {
					if gctx.Err() != nil {
						return gctx.Err()
					}
					errsPer[i] = append(errsPer[i], &HostError{Host: n, Err: hostCause(err)})
					if !opts.KeepGoing {
						return nil
					}
					continue
				}
				results[i] = append(results[i], hs...)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, HostErrors{{Host: "*", Err: err}}
	}
	var hosts []fleet.Host
	var errs HostErrors
	for i := range chunks {
		hosts = append(hosts, results[i]...)
		errs = append(errs, errsPer[i]...)
	}
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].Name < hosts[j].Name })
	return hosts, errs
}

// hostCause strips the command from a nix error: the host is already named.
func hostCause(err error) error {
	var ne *nix.Error
	if errors.As(err, &ne) && ne.Message != "" {
		return fmt.Errorf("evaluation failed: %s", ne.Message)
	}
	return err
}

// Chunks splits names into chunks of at most size (auto when size <= 0),
// with a chunk count that is a multiple of jobs so workers finish together.
func Chunks(names []string, size, jobs int) [][]string {
	if len(names) == 0 {
		return nil
	}
	if size <= 0 {
		if jobs < 1 {
			jobs = 1
		}
		n := (len(names) + MaxChunk - 1) / MaxChunk
		n = (n + jobs - 1) / jobs * jobs
		if n > len(names) {
			n = len(names)
		}
		size = (len(names) + n - 1) / n
	}
	var out [][]string
	for i := 0; i < len(names); i += size {
		out = append(out, names[i:min(i+size, len(names))])
	}
	return out
}

func evalChunk(ctx context.Context, r *nix.Runner, f *fleet.Fleet, names []string) ([]fleet.Host, error) {
	// Names are validated (^[A-Za-z0-9][A-Za-z0-9._-]*$) before they get
	// here, so quoting them as Nix strings needs no escaping.
	var list strings.Builder
	for _, n := range names {
		if f.Layout == fleet.LayoutClassic {
			fmt.Fprintf(&list, "{ name = %q; path = %s; } ", n, classicConfigPath(f.Dir, n))
		} else {
			fmt.Fprintf(&list, "%q ", n)
		}
	}
	var args []string
	if f.Layout == fleet.LayoutClassic {
		expr := fmt.Sprintf("let info = %s; in builtins.listToAttrs (map (p: { name = p.name; value = info (import <nixpkgs/nixos> { configuration = p.path; }); }) [ %s])", hostInfo, list.String())
		args = []string{"eval", "--json", "--impure", "--expr", expr}
	} else {
		apply := fmt.Sprintf("cs: let info = %s; in builtins.listToAttrs (map (n: { name = n; value = info cs.${n}; }) [ %s])", hostInfo, list.String())
		args = []string{"eval", "--json", f.Ref + "#nixosConfigurations", "--apply", apply}
	}
	host := ""
	if len(names) == 1 {
		host = names[0]
	}
	out, err := r.Output(ctx, host, args...)
	if err != nil {
		return nil, err
	}
	res := gjson.ParseBytes(out)
	hosts := make([]fleet.Host, 0, len(names))
	for _, n := range names {
		v := res.Get(gjson.Escape(n))
		if !v.Exists() {
			return nil, fmt.Errorf("host %s: missing from nix eval output", n)
		}
		hosts = append(hosts, hostFromJSON(f, n, v))
	}
	return hosts, nil
}

func classicConfigPath(dir, name string) string {
	p := filepath.Join(dir, "hosts", name, "configuration.nix")
	return fmt.Sprintf("(/. + %q)", p)
}

func hostFromJSON(f *fleet.Fleet, name string, v gjson.Result) fleet.Host {
	h := fleet.Host{
		Name:     name,
		Managed:  v.Get("managed").Bool(),
		Enable:   v.Get("enable").Bool(),
		System:   v.Get("system").String(),
		HostName: v.Get("hostName").String(),
		Layout:   f.Layout,
		Ref:      f.Ref,
		Attr:     fleet.ConfigAttr(name),
	}
	if f.Layout == fleet.LayoutClassic {
		h.ClassicConfig = filepath.Join(f.Dir, "hosts", name, "configuration.nix")
		h.Attr = "hosts/" + name
	}
	o := fleet.Options{
		Host:      v.Get("host").String(),
		User:      v.Get("user").String(),
		Server:    v.Get("server").String(),
		Port:      int(v.Get("port").Int()),
		Mode:      v.Get("mode").String(),
		Operation: v.Get("operation").String(),
		Interval:  v.Get("interval").String(),
		Tags:      []string{},
	}
	for _, t := range v.Get("tags").Array() {
		o.Tags = append(o.Tags, t.String())
	}
	for _, s := range v.Get("secrets").Array() {
		o.Secrets = append(o.Secrets, s.String())
	}
	if o.Host == "" && h.Managed {
		// A module without services.bento.host: its agent uses the hostName.
		o.Host = h.HostName
	}
	if o.User == "" {
		o.User = name
	}
	if o.Mode == "" {
		o.Mode = "build"
	}
	if o.Operation == "" {
		o.Operation = "switch"
	}
	if o.Port == 0 && o.Server != "" {
		o.Port = 22
	}
	h.Options = o
	return h
}
