package main

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/bento-nix/bento/eval"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/nix"
)

func globalFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "verbose", Usage: "log every command bento runs"},
		&cli.BoolFlag{Name: "no-color", Usage: "never colour the output (also: NO_COLOR set to anything)"},
		flakeFlag(),
	}
}

func flakeFlag() cli.Flag {
	return &cli.StringFlag{Name: "flake", Aliases: []string{"f"}, Value: ".", Usage: "the fleet flake (or a directory with hosts/<name>/configuration.nix)", EnvVars: []string{"BENTO_FLAKE"}}
}

// flakeRef is --flake as given after the command or before it (bento
// --flake F deploy), else $BENTO_FLAKE, else ".". set says whether the
// user named one. urfave/cli reads a flag from the innermost command that
// defines it, which would hide a --flake given before the command.
func flakeRef(c *cli.Context) (ref string, set bool) {
	for _, ctx := range c.Lineage() {
		if slices.Contains(ctx.LocalFlagNames(), "flake") {
			return ctx.String("flake"), true
		}
	}
	if v := os.Getenv("BENTO_FLAKE"); v != "" {
		return v, true
	}
	return ".", false
}

// fleetFlags are the flags of every command that discovers the fleet.
func fleetFlags() []cli.Flag {
	return []cli.Flag{
		flakeFlag(),
		&cli.IntFlag{Name: "eval-jobs", Value: runtime.NumCPU(), DefaultText: "the number of CPUs", Usage: "nix eval processes run at once (discovery, and the hosts' derivations before their build); evaluation is CPU-bound"},
		&cli.IntFlag{Name: "eval-chunk", Usage: "hosts evaluated per nix eval process (default 0: sized by --eval-memory)"},
		&cli.StringFlag{Name: "eval-memory", Usage: "memory the --eval-jobs nix eval processes may use together, e.g. 8G (default: 3/4 of MemAvailable in /proc/meminfo); the first chunks assume 512 MiB a host, the rest are sized from the first chunk's measured peak memory, at most an even share per job", EnvVars: []string{"BENTO_EVAL_MEMORY"}},
		&cli.BoolFlag{Name: "keep-going", Aliases: []string{"k"}, Usage: "go on with the hosts that evaluate when some do not"},
	}
}

func logger(c *cli.Context) *slog.Logger {
	level := slog.LevelInfo
	if c.Bool("verbose") {
		level = slog.LevelDebug
	}
	var w io.Writer = os.Stderr
	if c.App != nil && c.App.ErrWriter != nil {
		w = c.App.ErrWriter
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

func nixRunner(c *cli.Context) *nix.Runner {
	return &nix.Runner{Bin: os.Getenv("BENTO_NIX"), Logger: logger(c)}
}

// useColor says whether w gets ANSI colours: a terminal, no NO_COLOR, no --no-color.
func useColor(c *cli.Context, w io.Writer) bool {
	if c.Bool("no-color") || os.Getenv("NO_COLOR") != "" {
		return false
	}
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// discover evaluates the fleet and applies the positional host selection.
// With --keep-going, hosts that fail to evaluate are reported as warnings
// and the returned error is nil; evalFailed tells the caller to exit
// non-zero at the end.
func discover(c *cli.Context) (f *fleet.Fleet, selected []fleet.Host, evalFailed bool, err error) {
	return discoverAndInstantiate(c, nil)
}

// discoverForBuild is discover for a command that builds the selected
// hosts next. When every host is selected (no host named), discovery also
// instantiates the deployed hosts' systems in its own nix processes
// (eval.Options.DrvPath) and returns them for builder.Options.DrvPaths, so
// that each configuration is evaluated once, not again by the build. With
// a selection it does not: instantiating the whole fleet to build one
// host would cost more than it saves.
func discoverForBuild(c *cli.Context) (f *fleet.Fleet, selected []fleet.Host, evalFailed bool, drvs map[string]string, err error) {
	if c.Args().Len() > 0 || c.Bool("dry-run") {
		f, selected, evalFailed, err = discover(c)
		return f, selected, evalFailed, nil, err
	}
	drvs = map[string]string{}
	var mu sync.Mutex
	f, selected, evalFailed, err = discoverAndInstantiate(c, func(host, drv string) {
		mu.Lock()
		drvs[host] = drv
		mu.Unlock()
	})
	return f, selected, evalFailed, drvs, err
}

func discoverAndInstantiate(c *cli.Context, drvPath func(host, drv string)) (f *fleet.Fleet, selected []fleet.Host, evalFailed bool, err error) {
	log := logger(c)
	// Evaluating copies the flake into the Nix store: refuse first when
	// that would copy the secrets too. (deploy checked already, and gave
	// the advice.)
	if _, err := guardSecretsNote(c, c.Command.Name != "deploy"); err != nil {
		return nil, nil, false, err
	}
	ref, _ := flakeRef(c)
	evalOpts, err := evalOptions(c)
	if err != nil {
		return nil, nil, false, err
	}
	evalOpts.Ref, evalOpts.DrvPath = ref, drvPath
	f, err = eval.Discover(c.Context, nixRunner(c), evalOpts)
	if evalFailed, err = skipFailedHosts(log, f, err); err != nil {
		return nil, nil, false, err
	}
	if c.Int("eval-jobs") < 1 {
		return nil, nil, false, usageError("--eval-jobs must be at least 1")
	}
	if err := checkArgsAfterFlags(c); err != nil {
		return nil, nil, false, err
	}
	selected, err = fleet.Select(f.Hosts, c.Args().Slice())
	if err != nil {
		return nil, nil, false, usageError("%w", err)
	}
	return f, selected, evalFailed, nil
}

// skipFailedHosts logs the hosts that failed to evaluate when the others
// could go on (--keep-going); any other error of discovery is returned,
// as the command's failure.
func skipFailedHosts(log *slog.Logger, f *fleet.Fleet, err error) (evalFailed bool, _ error) {
	if err == nil {
		return false, nil
	}
	var herrs eval.HostErrors
	if f == nil || !errors.As(err, &herrs) {
		if errors.As(err, &herrs) {
			err = withHint(err, "--keep-going goes on with the other hosts")
		}
		return false, failed(err)
	}
	for _, he := range herrs {
		log.Error("host skipped", "host", he.Host, "err", he.Err)
	}
	return true, nil
}

// checkArgsAfterFlags refuses a flag after the host names.
func checkArgsAfterFlags(c *cli.Context) error {
	for _, a := range c.Args().Slice() {
		if strings.HasPrefix(a, "-") {
			return usageError("%s comes after the host names: put flags first (bento %s %s %s)", a, c.Command.Name, a, strings.Join(slices.DeleteFunc(c.Args().Slice(), func(s string) bool { return s == a }), " "))
		}
	}
	return nil
}

// evalOptions reads the fleet flags that size nix evaluations.
func evalOptions(c *cli.Context) (eval.Options, error) {
	opts := eval.Options{
		Jobs:      c.Int("eval-jobs"),
		ChunkSize: c.Int("eval-chunk"),
		KeepGoing: c.Bool("keep-going"),
	}
	if opts.ChunkSize < 0 {
		return opts, usageError("--eval-chunk must be 0 (sized by --eval-memory) or more, got %d", opts.ChunkSize)
	}
	if s := c.String("eval-memory"); s != "" {
		m, err := eval.ParseSize(s)
		if err != nil {
			return opts, usageError("--eval-memory: %w", err)
		}
		opts.Memory = m
	}
	return opts, nil
}

type hinted struct {
	err  error
	hint string
}

func (h *hinted) Error() string { return h.err.Error() + "\n(" + h.hint + ")" }
func (h *hinted) Unwrap() error { return h.err }

func withHint(err error, hint string) error { return &hinted{err, hint} }
