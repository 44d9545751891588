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
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/tidwall/gjson"
	"golang.org/x/sync/errgroup"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/gitcmd"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
)

// Options tune discovery.
type Options struct {
	// Ref is the flake reference or directory; "." when empty.
	Ref string
	// Jobs is how many nix eval processes run at once; NumCPU when 0.
	Jobs int
	// ChunkSize is how many hosts one nix eval process evaluates; 0 sizes
	// chunks by Memory (see Chunker).
	ChunkSize int
	// Memory is how many bytes the Jobs nix eval processes may use together
	// when ChunkSize is 0; 0 means SystemBudget (DefaultMemoryShare of
	// MemAvailable).
	Memory int64
	// DrvPath, when set, asks discovery to instantiate the system of every
	// host bento deploys (managed and enabled) in the same nix process that
	// reads its options, and is called with each one's .drv path (from
	// several goroutines). The configuration's module system is then
	// evaluated once for both, not again by the build. A chunk whose
	// systems do not all evaluate is read again without them: a system
	// that does not evaluate is its build's failure, not discovery's.
	DrvPath func(host, drv string)
	// ChunkStarted, when set, is called with the hosts of each chunk as its
	// nix process starts (from several goroutines): a progress display.
	ChunkStarted func(names []string)
	// KeepGoing returns the hosts that evaluated, plus a HostErrors for the
	// others, instead of failing on the first host that does not evaluate.
	KeepGoing bool
}

// HostErrors lists every host that failed to evaluate.
type HostErrors []*fleet.HostError

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
	f, err := locateFleet(ctx, opts.Ref)
	if err != nil {
		return nil, err
	}
	hint := &untrackedHinter{ctx: ctx, dir: f.Dir}
	names, err := listHosts(ctx, r, f)
	if err != nil {
		if x := hint.explain(err); x != err {
			return nil, fmt.Errorf("fleet %s: %w", f.Ref, x)
		}
		return nil, err
	}
	valid, errs := validNames(names)
	if len(errs) > 0 && !opts.KeepGoing {
		return nil, errs
	}

	hosts, evalErrs := evaluate(ctx, r, f, valid, opts)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	for _, e := range evalErrs {
		e.Err = hint.explain(e.Err)
	}
	errs = append(errs, evalErrs...)
	hosts, agentErrs := dropMisnamedAgents(hosts)
	errs = append(errs, agentErrs...)
	sort.Slice(errs, func(i, j int) bool { return errs[i].Host < errs[j].Host })
	f.Hosts = hosts
	if len(errs) == 0 {
		return f, nil
	}
	if !opts.KeepGoing {
		return nil, errs
	}
	return f, errs
}

// locateFleet resolves ref (default ".") to a fleet with its layout: a
// local directory is checked here, where the fix can be named, rather
// than left to a Nix error that does not say what is missing.
func locateFleet(ctx context.Context, ref string) (*fleet.Fleet, error) {
	if ref == "" {
		ref = "."
	}
	f := &fleet.Fleet{Ref: ref, Layout: fleet.LayoutFlake}
	dir, ok := localDir(ref)
	if !ok {
		return f, nil
	}
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
		return nil, fmt.Errorf("fleet %s: no flake.nix and no hosts/<name>/configuration.nix there; point --flake at your fleet's flake", ref)
	}
	return f, nil
}

// validNames splits the fleet's host names into those safe to evaluate
// and an error for each of the others.
func validNames(names []string) (valid []string, errs HostErrors) {
	for _, n := range names {
		if err := fleet.ValidateName(n); err != nil {
			errs = append(errs, &fleet.HostError{Host: n, Err: err})
			continue
		}
		valid = append(valid, n)
	}
	return valid, errs
}

// dropMisnamedAgents removes the hosts whose agent would refuse every
// publication (fleet.Host.CheckAgentHost), with an error for each.
func dropMisnamedAgents(hosts []fleet.Host) ([]fleet.Host, HostErrors) {
	var errs HostErrors
	hosts = slices.DeleteFunc(hosts, func(h fleet.Host) bool {
		if err := h.CheckAgentHost(); err != nil {
			errs = append(errs, &fleet.HostError{Host: h.Name, Err: err})
			return true
		}
		return false
	})
	return hosts, errs
}

// localDir tells whether ref names a local directory, and which.
func localDir(ref string) (string, bool) {
	p := strings.TrimPrefix(ref, "path:")
	// Without a ':' it is a path (relative or absolute), not a URL.
	if strings.ContainsAny(p, ":#?") {
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
// of …: No such file or directory") does not say why. A directory in no
// work tree is read by Nix as it is; a git that fails is an error.
func checkTracked(ctx context.Context, dir string) error {
	top, err := gitcmd.Top(ctx, dir)
	if err != nil || top == "" {
		return err
	}
	files, _, err := gitcmd.Tracked(ctx, dir, "flake.nix")
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fmt.Errorf("flake.nix is not tracked by git in %s, and Nix sees only tracked files of a git repository: run git add flake.nix (and the files it imports)", top)
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
    placeholders = if b == null then [ ] else builtins.filter (n: let r = builtins.tryEval (b.${n} or ""); in r.success && r.value == null) [ "serverHostKey" "hostPublicKey" ];
    wave = if b == null then null else try ((b.rollout or { }).wave or null);
  }`

func evaluate(ctx context.Context, r *nix.Runner, f *fleet.Fleet, names []string, opts Options) ([]fleet.Host, HostErrors) {
	var mu sync.Mutex
	var hosts []fleet.Host
	withDrv := opts.DrvPath != nil
	errs := forEachChunk(ctx, names, opts, true,
		func(ctx context.Context, chunk []string, rss *int64) (map[string]gjson.Result, error) {
			vals, err := evalChunk(ctx, r, f, chunk, withDrv, rss)
			if err == nil || !withDrv || ctx.Err() != nil {
				return vals, err
			}
			return evalChunk(ctx, r, f, chunk, false, rss)
		},
		func(name string, v gjson.Result) {
			if drv := v.Get("drvPath"); withDrv && drv.Type == gjson.String && strings.HasPrefix(drv.Str, "/") && strings.HasSuffix(drv.Str, ".drv") {
				opts.DrvPath(name, drv.Str)
			}
			h := hostFromJSON(f, name, v)
			mu.Lock()
			hosts = append(hosts, h)
			mu.Unlock()
		})
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].Name < hosts[j].Name })
	return hosts, errs
}

// chunkFunc evaluates one chunk of hosts in one nix process and returns
// each host's value, storing the process's peak memory in rss.
type chunkFunc func(ctx context.Context, names []string, rss *int64) (map[string]gjson.Result, error)

// forEachChunk evaluates names in chunks (a Chunker sized by opts), at most
// opts.Jobs processes at once, and calls keep for every host that
// evaluated, from several goroutines. When a chunk fails and fallback is
// set, its hosts are evaluated one by one so that the error names the
// host and the others are still known; without fallback, every host of the
// chunk is reported with the chunk's error. Without opts.KeepGoing, no new
// chunk starts after the first host error.
func forEachChunk(ctx context.Context, names []string, opts Options, fallback bool, eval chunkFunc, keep func(string, gjson.Result)) HostErrors {
	jobs := opts.Jobs
	if jobs <= 0 {
		jobs = runtime.NumCPU()
	}
	budget := opts.Memory
	if budget <= 0 {
		budget = SystemBudget()
	}
	c := &chunkRun{opts: opts, fallback: fallback, eval: eval, keep: keep, chunker: NewChunker(names, jobs, budget, opts.ChunkSize)}
	g, gctx := errgroup.WithContext(ctx)
	for range jobs {
		g.Go(func() error { return c.work(gctx) })
	}
	if err := g.Wait(); err != nil {
		return HostErrors{{Host: "*", Err: err}}
	}
	sort.Slice(c.errs, func(i, j int) bool { return c.errs[i].Host < c.errs[j].Host })
	return c.errs
}

// chunkRun is what the workers of one forEachChunk share.
type chunkRun struct {
	opts     Options
	fallback bool
	eval     chunkFunc
	keep     func(string, gjson.Result)
	chunker  *Chunker

	mu   sync.Mutex
	errs HostErrors
}

func (c *chunkRun) addErr(e *fleet.HostError) {
	c.mu.Lock()
	c.errs = append(c.errs, e)
	c.mu.Unlock()
	if !c.opts.KeepGoing {
		c.chunker.Stop()
	}
}

// work evaluates chunks until none is left; an error ends it only when
// ctx ended (a host's error is recorded, not returned).
func (c *chunkRun) work(ctx context.Context) error {
	for chunk := c.chunker.Next(); chunk != nil; chunk = c.chunker.Next() {
		if err := c.chunk(ctx, chunk); err != nil {
			return err
		}
	}
	return nil
}

func (c *chunkRun) chunk(ctx context.Context, chunk []string) error {
	var rss int64
	if c.opts.ChunkStarted != nil {
		c.opts.ChunkStarted(chunk)
	}
	vals, err := c.eval(ctx, chunk, &rss)
	if err == nil {
		c.chunker.Observe(len(chunk), rss)
		for _, n := range chunk {
			c.keep(n, vals[n])
		}
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(chunk) == 1 || !c.fallback {
		for _, n := range chunk {
			c.addErr(&fleet.HostError{Host: n, Err: hostCause(err)})
		}
		return nil
	}
	return c.oneByOne(ctx, chunk, &rss)
}

// oneByOne evaluates a failed chunk's hosts each on its own, so that the
// error names the host and the others are still known.
func (c *chunkRun) oneByOne(ctx context.Context, chunk []string, rss *int64) error {
	for _, n := range chunk {
		vals, err := c.eval(ctx, []string{n}, rss)
		if err == nil {
			c.keep(n, vals[n])
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.addErr(&fleet.HostError{Host: n, Err: hostCause(err)})
		if !c.opts.KeepGoing {
			return nil
		}
	}
	return nil
}

// hostCause strips the command from a nix error: the host is already named.
func hostCause(err error) error {
	var ne *nix.Error
	if errors.As(err, &ne) && ne.Message != "" {
		return fmt.Errorf("evaluation failed: %s", ne.Message)
	}
	return err
}

// nixNames renders validated host names as a Nix list body. Names match
// ^[A-Za-z0-9][A-Za-z0-9._-]*$ (fleet.ValidateName) before they get here,
// so quoting them as Nix strings needs no escaping.
func nixNames(names []string) string {
	var list strings.Builder
	for _, n := range names {
		fmt.Fprintf(&list, "%q ", n)
	}
	return list.String()
}

// withDrvInfo extends hostInfo with the drvPath of a deployed host's system.
const withDrvInfo = `info: c: let i = info c; in i // { drvPath = if i.managed && i.enable then c.config.system.build.toplevel.drvPath else null; }`

func evalChunk(ctx context.Context, r *nix.Runner, f *fleet.Fleet, names []string, withDrv bool, rss *int64) (map[string]gjson.Result, error) {
	info := hostInfo
	if withDrv {
		info = fmt.Sprintf("(%s) (%s)", withDrvInfo, hostInfo)
	}
	var args []string
	if f.Layout == fleet.LayoutClassic {
		var list strings.Builder
		for _, n := range names {
			fmt.Fprintf(&list, "{ name = %q; path = %s; } ", n, classicConfigPath(f.Dir, n))
		}
		expr := fmt.Sprintf("let info = %s; in builtins.listToAttrs (map (p: { name = p.name; value = info (import <nixpkgs/nixos> { configuration = p.path; }); }) [ %s])", info, list.String())
		args = []string{"eval", "--json", "--impure", "--expr", expr}
	} else {
		apply := fmt.Sprintf("cs: let info = %s; in builtins.listToAttrs (map (n: { name = n; value = info cs.${n}; }) [ %s])", info, nixNames(names))
		args = []string{"eval", "--json", f.Ref + "#nixosConfigurations", "--apply", apply}
		if withDrv {
			// Instantiating writes to the store; the evaluation cache is
			// one SQLite database per flake that concurrent processes
			// fight over.
			args = append(args, "--no-eval-cache")
		}
	}
	return runChunk(ctx, r, names, args, rss)
}

// runChunk runs one nix eval --json whose result is an object keyed by
// host name, and reads it in one pass: with thousands of hosts per chunk,
// a lookup per host (each re-scanning the whole output) dominated
// discovery's CPU time.
func runChunk(ctx context.Context, r *nix.Runner, names []string, args []string, rss *int64) (map[string]gjson.Result, error) {
	host := ""
	if len(names) == 1 {
		host = names[0]
	}
	out, err := r.Run(ctx, nix.Cmd{Host: host, Args: args, MaxRSS: rss})
	if err != nil {
		return nil, err
	}
	res := gjson.ParseBytes(out)
	if !res.IsObject() {
		return nil, fmt.Errorf("nix eval printed %q, want a JSON object of hosts", truncate(string(out), 200))
	}
	vals := make(map[string]gjson.Result, len(names))
	res.ForEach(func(k, v gjson.Result) bool {
		vals[k.String()] = v
		return true
	})
	for _, n := range names {
		if _, ok := vals[n]; !ok {
			return nil, fmt.Errorf("host %s: missing from nix eval output", n)
		}
	}
	return vals, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func classicConfigPath(dir, name string) string {
	p := filepath.Join(dir, "hosts", name, "configuration.nix")
	return fmt.Sprintf("(/. + %s)", nixString(p))
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
	h.Options = optionsFromJSON(v)
	setOptionDefaults(&h.Options, h)
	return h
}

// optionsFromJSON reads a host's services.bento options as evaluated.
func optionsFromJSON(v gjson.Result) fleet.Options {
	o := fleet.Options{
		Host:         v.Get("host").String(),
		User:         v.Get("user").String(),
		Server:       v.Get("server").String(),
		Port:         int(v.Get("port").Int()),
		Mode:         v.Get("mode").String(),
		Operation:    v.Get("operation").String(),
		Interval:     v.Get("interval").String(),
		Tags:         appendStrings([]string{}, v.Get("tags")),
		Secrets:      appendStrings(nil, v.Get("secrets")),
		Placeholders: appendStrings(nil, v.Get("placeholders")),
		Wave:         fleet.DefaultWave,
	}
	if w := v.Get("wave"); w.Type == gjson.Number && w.Int() >= 0 && float64(w.Int()) == w.Num {
		o.Wave = int(w.Int())
	}
	return o
}

// appendStrings appends the strings of the JSON array a to to.
func appendStrings(to []string, a gjson.Result) []string {
	for _, x := range a.Array() {
		to = append(to, x.String())
	}
	return to
}

// setOptionDefaults fills in the options of h that its module left unset.
func setOptionDefaults(o *fleet.Options, h fleet.Host) {
	if o.Host == "" && h.Managed {
		// A module without services.bento.host: its agent uses the hostName.
		o.Host = h.HostName
	}
	if o.User == "" {
		o.User = h.Name
	}
	if o.Mode == "" {
		o.Mode = manifest.ModeBuild
	}
	if o.Operation == "" {
		o.Operation = "switch"
	}
	if o.Port == 0 && o.Server != "" {
		o.Port = 22
	}
}
