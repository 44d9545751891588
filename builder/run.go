package builder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/bento-nix/bento/eval"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/nix"
)

// Build builds hosts, evaluating at most opts.EvalJobs and building at
// most opts.Jobs at once, and returns one Result per host in the order
// given. The error is only for problems that stop everything before the
// first host starts (bad options, unusable state directory); a host's
// failure, and cancellation, live in its Result.
func Build(ctx context.Context, r *nix.Runner, hosts []fleet.Host, opts Options) ([]Result, error) {
	b, err := newRun(r, hosts, opts)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(hosts))
	for i, h := range hosts {
		names[i] = h.Name
	}
	b.prog.Begin(names)

	results := make([]Result, len(hosts))
	done := make([]bool, len(hosts))
	finish := func(h *hostRun) {
		results[h.i] = h.finish(ctx)
		done[h.i] = true
		b.prog.Done(results[h.i])
	}

	// evaluated holds hosts whose derivation is known, waiting for a
	// build slot. It can hold every host: chunked evaluation delivers a
	// whole chunk at once, and a chunk worker must not wait for builds.
	evaluated := make(chan *hostRun, len(hosts))
	b.startEvaluations(ctx, hosts, evaluated, finish)
	var builds errgroup.Group
	for range b.opts.Jobs {
		builds.Go(func() error {
			b.buildEvaluated(ctx, evaluated, finish)
			return nil
		})
	}
	_ = builds.Wait()

	for i, h := range hosts {
		if !done[i] {
			results[i] = Result{Host: h.Name, Status: StatusCancelled, Err: hostError(h.Name, "build", fmt.Errorf("not started: %w", context.Cause(ctx)))}
			b.prog.Done(results[i])
		}
	}
	b.prog.End()
	return results, nil
}

// newRun checks the options and opens the state directory: the problems
// that stop everything before the first host starts.
func newRun(r *nix.Runner, hosts []fleet.Host, opts Options) (*run, error) {
	if r == nil {
		r = &nix.Runner{}
	}
	if err := validate(hosts, &opts); err != nil {
		return nil, err
	}
	st, err := openState(opts.StateDir)
	if err != nil {
		return nil, err
	}
	prog := opts.Progress
	if prog == nil {
		prog = silent{}
	}
	return &run{runner: r, opts: opts, state: st, stamp: logStamp(time.Now()), prog: prog}, nil
}

// startEvaluations starts the evaluation workers and what feeds them;
// evaluated is closed once every host is evaluated or finished.
func (b *run) startEvaluations(ctx context.Context, hosts []fleet.Host, evaluated chan *hostRun, finish func(*hostRun)) {
	// single holds hosts evaluated one per nix process, into their own
	// log: every host in a dry run (nix build --dry-run says what would be
	// built), else the hosts of chunks that failed to evaluate, so that
	// each one's log shows its own error.
	single := make(chan int, len(hosts))
	var evals errgroup.Group
	for range b.opts.EvalJobs {
		evals.Go(func() error {
			b.evaluateSingles(ctx, hosts, single, evaluated, finish)
			return nil
		})
	}
	go func() {
		if b.opts.DryRun {
			for i := range hosts {
				single <- i
			}
		} else {
			b.evaluateChunks(ctx, hosts, single, evaluated)
		}
		close(single)
		_ = evals.Wait()
		close(evaluated)
	}()
}

// evaluateSingles is one evaluation worker: it evaluates the hosts sent on
// single one nix process each, and hands them to the builds (or finishes
// them: a failed evaluation, a dry run).
func (b *run) evaluateSingles(ctx context.Context, hosts []fleet.Host, single <-chan int, evaluated chan<- *hostRun, finish func(*hostRun)) {
	for i := range single {
		if ctx.Err() != nil {
			continue
		}
		h := b.evaluate(ctx, i, hosts[i])
		if h.err != nil || b.opts.DryRun {
			finish(h)
			continue
		}
		h.evaluated = time.Now()
		b.prog.Phase(h.host.Name, PhaseWaiting)
		evaluated <- h
	}
}

// buildEvaluated is one build slot: it builds evaluated hosts until none
// are left (an unchanged one is only copied to CopyTo).
func (b *run) buildEvaluated(ctx context.Context, evaluated <-chan *hostRun, finish func(*hostRun)) {
	for h := range evaluated {
		if !b.unchanged(h) {
			b.build(ctx, h)
		} else if b.opts.CopyTo != "" {
			b.copyResult(ctx, h)
		}
		finish(h)
	}
}

// run is one call of Build.
type run struct {
	runner *nix.Runner
	opts   Options
	state  *stateDir
	stamp  string
	prog   Progress
	// evaluating holds the hosts whose evaluating phase was announced, so
	// that a host evaluated again alone (its chunk failed) is not
	// announced twice.
	evaluating sync.Map
	// copyMu serialises copies to an ssh-ng:// store.
	copyMu sync.Mutex
}

// hostRun is one host going through a run.
type hostRun struct {
	i     int
	host  fleet.Host
	start time.Time
	// evaluated is when evaluation ended; waited is the time spent between
	// then and a free build slot, which is not the host's own duration.
	evaluated time.Time
	waited    time.Duration
	logf      *os.File
	lw        *lineWriter
	res       Result
	err       error
}

func (h *hostRun) fail(stage string, err error) {
	h.err = hostError(h.host.Name, stage, err)
	if h.logf != nil {
		h.lw.Flush()
		fmt.Fprintf(h.logf, "bento: %s: %s\n", stage, bentoLines(brief(err).Error()))
	}
}

// finish closes the host's log and returns its result.
func (h *hostRun) finish(ctx context.Context) Result {
	res := h.res
	res.Host = h.host.Name
	res.Duration = time.Since(h.start) - h.waited
	if h.err != nil {
		res.Err = h.err
		res.Status = StatusFailed
		if ctx.Err() != nil {
			res.Status = StatusCancelled
		}
	}
	if h.logf != nil {
		h.lw.Flush()
		h.logf.Close()
	}
	return res
}

// nixBuildOutput is one element of nix build --json.
type nixBuildOutput struct {
	DrvPath string            `json:"drvPath"`
	Outputs map[string]string `json:"outputs"`
}

// evaluate instantiates the host's toplevel. In a dry run, it is
// nix build --dry-run, which also says what would be built or fetched.
func (b *run) evaluate(ctx context.Context, i int, host fleet.Host) *hostRun {
	h := &hostRun{i: i, host: host, start: time.Now()}
	logf, err := b.state.newLog(host.Name, b.stamp)
	if err != nil {
		h.fail("build", err)
		return h
	}
	h.logf, h.lw = logf, newLineWriter(logf, host.Name, b.prog)
	h.res.LogFile = logf.Name()
	if _, already := b.evaluating.LoadOrStore(host.Name, true); !already {
		b.prog.Phase(host.Name, PhaseEvaluating)
	}

	// The evaluation cache is one SQLite database per flake that
	// concurrent evaluations fight over ("error (ignored): … is busy" in
	// every log), and a changed flake misses it anyway.
	if b.opts.DryRun {
		b.dryRun(ctx, h)
	} else {
		b.instantiate(ctx, h)
	}
	return h
}

// dryRun is nix build --dry-run of h's toplevel: its drv and out paths.
func (b *run) dryRun(ctx context.Context, h *hostRun) {
	host, logf := h.host, h.logf
	args := append([]string{"build", "--dry-run", "--json", "--no-link", "--no-eval-cache"}, host.Installable(ToplevelSub)...)
	fmt.Fprintf(logf, "bento: dry run of %s, started %s\nbento: $ nix %s\n", host.Name, h.start.Format(time.RFC3339), strings.Join(args, " "))
	out, err := b.runner.Run(ctx, nix.Cmd{Host: host.Name, Args: args, Log: h.lw})
	if err != nil {
		h.fail("evaluate", err)
		return
	}
	var outs []nixBuildOutput
	if err := json.Unmarshal(out, &outs); err != nil || len(outs) != 1 || outs[0].DrvPath == "" {
		h.fail("evaluate", fmt.Errorf("unexpected output of nix build --dry-run --json (%q): want one derivation", truncate(string(out), 200)))
		return
	}
	h.res.DrvPath, h.res.OutPath, h.res.Status = outs[0].DrvPath, outs[0].Outputs["out"], StatusDryRun
	h.lw.Flush()
	fmt.Fprintf(logf, "bento: dry run: %s would build %s\n", host.Name, h.res.OutPath)
}

// instantiate is nix eval of h's toplevel's drvPath, which instantiates it.
func (b *run) instantiate(ctx context.Context, h *hostRun) {
	host, logf := h.host, h.logf
	args := append([]string{"eval", "--raw", "--no-eval-cache"}, host.Installable(ToplevelSub+".drvPath")...)
	fmt.Fprintf(logf, "bento: build of %s, started %s\nbento: $ nix %s\n", host.Name, h.start.Format(time.RFC3339), strings.Join(args, " "))
	out, err := b.runner.Run(ctx, nix.Cmd{Host: host.Name, Args: args, Log: h.lw})
	if err != nil {
		h.fail("evaluate", err)
		return
	}
	drv := strings.TrimSpace(string(out))
	if !strings.HasPrefix(drv, "/") || !strings.HasSuffix(drv, ".drv") {
		h.fail("evaluate", fmt.Errorf("%s is not a derivation: nix eval of its drvPath printed %q", ToplevelSub, truncate(drv, 200)))
		return
	}
	h.res.DrvPath = drv
	h.lw.Flush()
	fmt.Fprintf(logf, "bento: evaluated %s\n", drv)
}

// evaluateChunks instantiates every host's toplevel with a few chunked
// nix eval processes (eval.DrvPaths) instead of one process per host, and
// sends each host to evaluated as its chunk ends, so that builds start
// while later chunks evaluate. Hosts of a chunk that failed go to single,
// to be evaluated alone into their own log.
func (b *run) evaluateChunks(ctx context.Context, hosts []fleet.Host, single chan<- int, evaluated chan<- *hostRun) {
	index := make(map[string]int, len(hosts))
	for i, h := range hosts {
		index[h.Name] = i
	}
	opts := eval.Options{Jobs: b.opts.EvalJobs, ChunkSize: b.opts.EvalChunk, Memory: b.opts.EvalMemory,
		ChunkStarted: func(names []string) {
			for _, n := range names {
				b.evaluating.Store(n, true)
				b.prog.Phase(n, PhaseEvaluating)
			}
		}}
	ready := func(name, drv, how string) {
		i := index[name]
		h := &hostRun{i: i, host: hosts[i], start: time.Now()}
		logf, err := b.state.newLog(name, b.stamp)
		if err != nil {
			h.fail("build", err)
		} else {
			h.logf, h.lw = logf, newLineWriter(logf, name, b.prog)
			h.res.LogFile = logf.Name()
			h.res.DrvPath = drv
			fmt.Fprintf(logf, "bento: build of %s, started %s\nbento: evaluated %s (%s)\n", name, h.start.Format(time.RFC3339), drv, how)
		}
		h.evaluated = time.Now()
		b.prog.Phase(name, PhaseWaiting)
		evaluated <- h
	}
	var rest []fleet.Host
	for _, h := range hosts {
		if drv := b.opts.DrvPaths[h.Name]; strings.HasPrefix(drv, "/") && strings.HasSuffix(drv, ".drv") {
			b.prog.Phase(h.Name, PhaseEvaluating)
			b.evaluating.Store(h.Name, true)
			ready(h.Name, drv, "instantiated during discovery")
			continue
		}
		rest = append(rest, h)
	}
	if len(rest) == 0 {
		return
	}
	_ = eval.DrvPaths(ctx, b.runner, rest, opts,
		func(name, drv string) {
			ready(name, drv, "nix eval --json of many hosts' "+eval.ToplevelDrv+" at once")
		},
		func(name string, err error) {
			if b.runner.Logger != nil {
				b.runner.Logger.Debug("chunked evaluation failed; evaluating the host alone", "host", name, "err", err)
			}
			single <- index[name]
		})
}

// unchanged tells whether h's derivation is the one its last successful
// build realised and that build's GC root still holds the system: then
// nix-store --realise would only confirm it, at the cost of a Nix process
// per host, and the host is done. An unchanged redeploy then costs about
// what --no-build costs (the evaluation aside).
func (b *run) unchanged(h *hostRun) bool {
	if h.err != nil || h.logf == nil {
		return false
	}
	rec, ok := b.state.record(h.host.Name)
	if !ok || rec.DrvPath != h.res.DrvPath || rec.OutPath == "" || !exists(rec.OutPath) {
		return false
	}
	root, ok := b.state.rootOf(h.host.Name, rec.OutPath)
	if !ok {
		return false
	}
	h.waited = time.Since(h.evaluated)
	h.res.OutPath, h.res.Status, h.res.Unchanged = rec.OutPath, StatusBuilt, true
	h.lw.Flush()
	fmt.Fprintf(h.logf, "bento: unchanged: %s was built to %s at %s and its GC root %s is in place; not realised again\n", rec.DrvPath, rec.OutPath, rec.BuiltAt.Format(time.RFC3339), root)
	return true
}

// build realises the evaluated derivation into an out link that Nix
// registers as a GC root, keeps the result, and copies it when asked.
//
// nix-store --realise is used, not nix build DRV: nix build changed its
// reading of a .drv argument (Nix ≥ 2.15 returns the .drv itself unless
// given DRV^*, a syntax Nix 2.8 rejects), the old CLI never did.
func (b *run) build(ctx context.Context, h *hostRun) {
	name := h.host.Name
	h.waited = time.Since(h.evaluated)
	if ctx.Err() != nil {
		h.fail("build", fmt.Errorf("not started: %w", context.Cause(ctx)))
		return
	}
	b.prog.Phase(name, PhaseBuilding)
	link, err := b.state.outLink(name, h.logf.Name())
	if err != nil {
		h.fail("build", err)
		return
	}
	if err := b.realise(ctx, h, link); err != nil {
		h.fail("build", err)
		return
	}
	out, err := os.Readlink(link)
	if err != nil || !strings.HasPrefix(out, "/") {
		h.fail("build", fmt.Errorf("nix-store --realise made no out link %s: %v", link, err))
		return
	}
	h.res.OutPath = out
	// Kept even when the run is being cancelled: the build is done.
	if err := b.state.keep(context.WithoutCancel(ctx), Record{Host: name, OutPath: out, DrvPath: h.res.DrvPath, BuiltAt: time.Now().UTC()}, link); err != nil {
		h.fail("keep result", err)
		return
	}
	h.res.Status = StatusBuilt
	h.lw.Flush()
	fmt.Fprintf(h.logf, "bento: built %s\n", out)

	if b.opts.CopyTo != "" {
		b.copyResult(ctx, h)
	}
}

// realise runs nix-store --realise of h's derivation, linking its output
// at link.
func (b *run) realise(ctx context.Context, h *hostRun, link string) error {
	// Hosts build in separate processes that often need the same
	// derivations at once; the losers of a lock poll for it every
	// build-poll-interval (5 s by default), which 1 s makes cheap.
	args := []string{"--realise", h.res.DrvPath, "--add-root", link, "--option", "build-poll-interval", "1"}
	if b.opts.Builders != "" {
		args = append(args, "--option", "builders", b.opts.Builders)
	}
	if b.opts.MaxJobs > 0 {
		args = append(args, "--max-jobs", strconv.Itoa(b.opts.MaxJobs))
	}
	fmt.Fprintf(h.logf, "bento: $ nix-store %s\n", strings.Join(args, " "))
	_, err := b.runner.Run(ctx, nix.Cmd{Host: h.host.Name, Tool: "nix-store", Args: args, Log: h.lw})
	if err != nil {
		if _, statErr := os.Stat(h.res.DrvPath); errors.Is(statErr, os.ErrNotExist) {
			err = fmt.Errorf("%w (its derivation %s was garbage-collected after evaluation: build again)", brief(err), h.res.DrvPath)
		}
	}
	return err
}

// copyResult copies a built host's closure to opts.CopyTo (also when the
// host was unchanged: the store there may have lost it, or a previous copy
// failed; nix copy of paths already there costs one query).
func (b *run) copyResult(ctx context.Context, h *hostRun) {
	name, out := h.host.Name, h.res.OutPath
	b.prog.Phase(name, PhaseCopying)
	err := b.copy(ctx, name, out, h.lw)
	h.lw.Flush()
	if err != nil {
		h.res.CopyErr = hostError(name, "copy to "+b.opts.CopyTo, err)
		fmt.Fprintf(h.logf, "bento: copy to %s: %s\n", b.opts.CopyTo, bentoLines(brief(err).Error()))
		return
	}
	fmt.Fprintf(h.logf, "bento: copied to %s\n", b.opts.CopyTo)
}

// copy pushes the closure of path to opts.CopyTo, signing it first when a
// key is given: signatures live in the local store's database and travel
// with nix copy to any kind of store, unlike the secret-key URL parameter
// that only binary-cache stores understand.
func (b *run) copy(ctx context.Context, host, path string, lw *lineWriter) error {
	if b.opts.SignKey != "" {
		if _, err := b.runner.Run(ctx, nix.Cmd{Host: host, Args: []string{"store", "sign", "--recursive", "--key-file", b.opts.SignKey, path}, Log: lw}); err != nil {
			return fmt.Errorf("signing: %w", brief(err))
		}
	}
	if strings.HasPrefix(b.opts.CopyTo, "ssh-ng://") {
		// Concurrent copies whose closures overlap (hosts share most of
		// theirs) desynchronise Nix's daemon protocol ("not an absolute
		// path: 'nix-archive-1'", NixOS/nix#6253, #7720): one at a time.
		// Each skips what the previous ones copied.
		b.copyMu.Lock()
		defer b.copyMu.Unlock()
	}
	_, err := b.runner.Run(ctx, nix.Cmd{Host: host, Args: []string{"copy", "--to", b.opts.CopyTo, path}, Log: lw})
	return err
}
