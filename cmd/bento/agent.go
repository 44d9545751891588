package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/agent"
	"github.com/bento-nix/bento/agent/trigger"
	"github.com/bento-nix/bento/internal/proc"
	"github.com/bento-nix/bento/internal/timespan"
	"github.com/bento-nix/bento/manifest"
)

const defaultTriggerAddr = "unix:/run/bento/trigger.sock"

// defaultAgentConfig is the file the NixOS module writes: read when
// --config is not given and the file exists (a variable for tests).
var defaultAgentConfig = "/etc/bento/agent.json"

func agentCommand() *cli.Command {
	return &cli.Command{
		Name:  "agent",
		Usage: "the client: pull this host's publication, switch to it, report",
		Description: "Runs on every host (the NixOS module starts \"bento agent run\" from a timer).\n" +
			"Every setting comes from --config FILE (JSON), a flag, or a BENTO_* variable;\n" +
			"flags and variables override the file. See docs/agent.md.",
		Subcommands: []*cli.Command{
			agentInstallSecretsCommand(),
			agentStatusCommand(),
			agentApplyBundleCommand(),
			agentRunCommand(),
			agentCheckConfigCommand(),
			agentWatchCommand(),
			agentTriggerCommand(),
			agentTriggerServerCommand(),
		},
	}
}

func agentRunCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "run one tick: fetch, build, switch and report when a new version is published",
		Description: "Exits 0 when the host runs what is published (or nothing is published yet),\n" +
			"1 when an attempt failed or rolled back, a failed version waits for its retry,\n" +
			"or the server could not be reached (reports then wait in the state directory),\n" +
			"2 when the configuration is invalid.",
		Flags: append(agentConfigFlags(), tickFlags()...),
		Action: func(c *cli.Context) error {
			// A watcher that goes away (a closed pipe, a trigger
			// server stopped mid-tick) must not kill a tick that
			// may be switching the system: write errors are enough.
			signal.Ignore(syscall.SIGPIPE)
			cfg, err := agentConfig(c)
			if err != nil {
				return err
			}
			return runTick(c, cfg, c.App.ErrWriter)
		},
	}
}

// tickFlags are the flags of the commands that run a tick.
func tickFlags() []cli.Flag {
	return []cli.Flag{
		&cli.DurationFlag{Name: "lock-wait", Usage: "give up when another tick holds the lock for this long; 0: at once, as in every command (default: wait)"},
		&cli.BoolFlag{Name: "now", Usage: "try a version that failed again now, without waiting for its retry delay"},
	}
}

func agentCheckConfigCommand() *cli.Command {
	return &cli.Command{
		Name:  "check-config",
		Usage: "validate an agent configuration as \"bento agent run\" would, touching nothing",
		Description: "Loads --config FILE (and any flags or BENTO_* variables) and checks every\n" +
			"setting with the agent's own rules. Exits 0 when the agent would accept it,\n" +
			"2 with the agent's message when not. The NixOS module runs it on the file it\n" +
			"writes when the system is built. It does not read the identity file or\n" +
			"connect: those are checked when the agent runs.",
		Flags: agentConfigFlags(),
		Action: func(c *cli.Context) error {
			cfg, err := agentConfig(c)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "bento: the agent configuration for host %s is valid\n", cfg.Host)
			return nil
		},
	}
}

func agentWatchCommand() *cli.Command {
	return &cli.Command{
		Name:  "watch",
		Usage: "hold one connection to the server and run a tick as soon as a new publication appears",
		Description: "Keeps one SSH connection open (keepalives; reconnects with growing, jittered\n" +
			"pauses) and looks at this host's manifest.json every --every (one SFTP stat,\n" +
			"no new handshake). At start and whenever the manifest changed it runs a tick,\n" +
			"\"bento agent run\", as a child process that a restart of the watch never\n" +
			"cuts short. The timer's ticks go on beside it (the lock keeps one tick at a\n" +
			"time): the watch makes updates arrive in seconds, it is never the only path.\n" +
			"Stopped, it returns at once: a running tick finishes on its own.",
		Flags: append(agentConfigFlags(),
			&cli.StringFlag{Name: "every", Value: "5s", Usage: "pause between two looks at the manifest, a systemd time span or Go duration (1s to 10min)"},
		),
		Action: runAgentWatch,
	}
}

func runAgentWatch(c *cli.Context) error {
	cfg, err := agentConfig(c)
	if err != nil {
		return err
	}
	every, err := timespan.Parse(c.String("every"))
	if err != nil {
		return usageError("--every: %w", err)
	}
	if every < time.Second || every > 10*time.Minute {
		return usageError("--every %s is out of range: it must be from 1s to 10min", timespan.Format(every))
	}
	fmt.Fprintf(c.App.ErrWriter, "bento: watching %s on %s every %s\n", manifest.ManifestFile, serverNames(cfg), every)
	err = agent.Watch(c.Context, cfg, agent.WatchOptions{
		Every: every,
		Out:   c.App.ErrWriter,
		Tick: func(ctx context.Context) error {
			return runTickProcess(ctx, c, c.App.ErrWriter)
		},
	})
	return agentError(err)
}

func agentTriggerCommand() *cli.Command {
	return &cli.Command{
		Name:  "trigger",
		Usage: "ask the local trigger server for a tick now and stream its output",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "address", Value: defaultTriggerAddr, Usage: "the trigger server's unix:/path or 127.0.0.1:PORT", EnvVars: []string{"BENTO_TRIGGER"}},
		},
		Action: func(c *cli.Context) error {
			a, err := trigger.ParseAddr(c.String("address"))
			if err != nil {
				return usageError("%w", err)
			}
			err = trigger.Request(c.Context, a, c.App.Writer)
			if errors.Is(err, trigger.ErrFailed) {
				return failed(err)
			}
			return err
		},
	}
}

func agentTriggerServerCommand() *cli.Command {
	return &cli.Command{
		Name:  "trigger-server",
		Usage: "serve tick requests on unix sockets or loopback ports, streaming each tick's output",
		Flags: append(agentConfigFlags(),
			&cli.StringSliceFlag{Name: "listen", Value: cli.NewStringSlice(defaultTriggerAddr), Usage: "unix:/path or 127.0.0.1:PORT (never all interfaces); repeat to listen on several", EnvVars: []string{"BENTO_TRIGGER"}},
			&cli.IntFlag{Name: "max-clients", Value: trigger.DefaultMaxClients, Usage: "clients that may wait for or watch a tick at once; more are refused"},
		),
		Action: runTriggerServer,
	}
}

func runTriggerServer(c *cli.Context) error {
	cfg, err := agentConfig(c)
	if err != nil {
		return err
	}
	lns, err := triggerListeners(c)
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(c.App.ErrWriter, nil))
	srv := &trigger.Server{
		Tick: func(ctx context.Context, out io.Writer) error {
			return runTickProcess(ctx, c, io.MultiWriter(out, c.App.ErrWriter))
		},
		// Read anew for each connection: a switch changes
		// the configuration file without restarting this
		// server. A file that no longer loads keeps the
		// groups the server started with.
		AllowedGroups: func() []string {
			now, err := loadAgentConfig(c, io.Discard)
			if err != nil {
				log.Warn("trigger: configuration unreadable, keeping the allowed groups read at start", "err", err, "allowedGroups", cfg.Trigger.AllowedGroups)
				return cfg.Trigger.AllowedGroups
			}
			return now.Trigger.AllowedGroups
		},
		MaxClients: c.Int("max-clients"),
		Log:        log,
		// Each tick is a process of its own
		// (runTickProcess): a restart need not wait.
		Detached: true,
	}
	return srv.ServeAll(c.Context, lns)
}

// triggerListeners listens on every --listen address, all parsed
// first; on an error it returns the listeners opened so far, for the
// caller to close.
func triggerListeners(c *cli.Context) ([]net.Listener, error) {
	var addrs []trigger.Addr
	for _, s := range c.StringSlice("listen") {
		a, err := trigger.ParseAddr(s)
		if err != nil {
			return nil, usageError("%w", err)
		}
		addrs = append(addrs, a)
	}
	var lns []net.Listener
	for _, a := range addrs {
		ln, err := trigger.Listen(a)
		if err != nil {
			return lns, failed(err)
		}
		lns = append(lns, ln)
		fmt.Fprintf(c.App.ErrWriter, "bento: trigger server listening on %s\n", a)
	}
	return lns, nil
}

// agentInstallSecretsCommand is "bento agent install-secrets": the applied
// version's secrets back in place from the agent's copies, no network (the
// NixOS module runs it at boot, since /run starts empty).
func agentInstallSecretsCommand() *cli.Command {
	return &cli.Command{
		Name:  "install-secrets",
		Usage: "put the applied version's secrets back in place from the local copies (no network; for boot)",
		Description: "Reinstalls every secret of the version this host applied, from the copies the agent\n" +
			"keeps in its state directory, without contacting the server: run it at boot, before\n" +
			"the units that read secrets under /run. Exits 1 when a secret could not be installed\n" +
			"(the others are), 2 when the configuration is invalid.",
		Flags: append(agentConfigFlags(),
			&cli.DurationFlag{Name: "lock-wait", Usage: "give up when a tick holds the lock for this long; 0: at once, as in every command (default: wait)"},
			&cli.BoolFlag{Name: "no-restart", Usage: "do not restart the restartUnits of the secrets written (at boot they start after this)"},
		),
		Action: func(c *cli.Context) error {
			cfg, err := agentConfig(c)
			if err != nil {
				return err
			}
			err = agent.InstallSecrets(c.Context, cfg, agent.Options{Out: c.App.ErrWriter, LockWait: lockWait(c)}, !c.Bool("no-restart"))
			if err != nil {
				return failed(err)
			}
			return nil
		},
	}
}

// agentConfigFlags are --config plus one flag per configuration key.
func agentConfigFlags() []cli.Flag {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "JSON configuration file (written by the NixOS module; default " + defaultAgentConfig + " when it exists)", EnvVars: []string{"BENTO_CONFIG"}},
	}
	for _, k := range agent.Keys() {
		usage := k.Usage
		if k.List {
			usage += " (a list)"
		}
		if k.Bool {
			flags = append(flags, &cli.BoolFlag{Name: k.Flag, Usage: usage, EnvVars: []string{k.Env}})
			continue
		}
		flags = append(flags, &cli.StringFlag{Name: k.Flag, Usage: usage, EnvVars: []string{k.Env}})
	}
	return flags
}

// agentConfig builds the configuration: defaults, then the file, then
// flags and environment variables.
func agentConfig(c *cli.Context) (agent.Config, error) {
	if c.IsSet("lock-wait") && c.Duration("lock-wait") < 0 {
		return agent.Config{}, usageError("--lock-wait must not be negative")
	}
	return loadAgentConfig(c, c.App.ErrWriter)
}

// loadAgentConfig is agentConfig with the file's warnings sent to warn.
func loadAgentConfig(c *cli.Context, warn io.Writer) (agent.Config, error) {
	cfg := agent.Defaults()
	if file := agentConfigFile(c); file != "" {
		warnings, err := cfg.LoadFile(file)
		for _, w := range warnings {
			fmt.Fprintln(warn, "bento: warning:", w)
		}
		if err != nil {
			return cfg, usageError("%w", err)
		}
	}
	if err := setAgentFlags(c, &cfg); err != nil {
		return cfg, err
	}
	if err := cfg.Complete(); err != nil {
		return cfg, usageError("%w", err)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, usageError("agent configuration: %s", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return cfg, nil
}

// agentConfigFile is --config, else the module's file when it exists;
// "" for none.
func agentConfigFile(c *cli.Context) string {
	file := c.String("config")
	if file == "" && !c.IsSet("config") {
		if _, err := os.Stat(defaultAgentConfig); err == nil {
			file = defaultAgentConfig
		}
	}
	return file
}

// setAgentFlags sets the configuration keys given as flags (or their
// variables).
func setAgentFlags(c *cli.Context, cfg *agent.Config) error {
	for _, k := range agent.Keys() {
		if !c.IsSet(k.Flag) {
			continue
		}
		v := c.String(k.Flag)
		if k.Bool {
			v = strconv.FormatBool(c.Bool(k.Flag))
		}
		if err := cfg.Set(k.Name, v); err != nil {
			return usageError("--%s (or %s): %w", k.Flag, k.Env, err)
		}
	}
	return nil
}

func runTick(c *cli.Context, cfg agent.Config, out io.Writer) error {
	return runAgent(c, cfg, agent.Options{
		Out:      out,
		LockWait: lockWait(c),
		RetryNow: c.Bool("now"),
	})
}

// runAgent runs one tick with o, on the command's nix and as this
// bento's version, and gives its exit: an error of the agent's
// configuration is a usage error (2), any other a failure (1).
func runAgent(c *cli.Context, cfg agent.Config, o agent.Options) error {
	o.Nix = nixRunner(c)
	o.AgentVersion = version
	_, err := agent.Run(c.Context, cfg, o)
	return agentError(err)
}

// agentError is the exit for an error of the agent: its configuration's
// is a usage error (2), any other a failure (1).
func agentError(err error) error {
	var ce *agent.ConfigError
	if errors.As(err, &ce) {
		return usageError("agent configuration: %w", err)
	}
	if err != nil {
		return failed(err)
	}
	return nil
}

// lockWait is --lock-wait as every command reads it: a duration bounds
// the wait for the lock and 0 does not wait (as bento deploy's default,
// agent.Options.LockWait < 0); left out, the agent waits as long as it
// takes (agent.Options.LockWait 0).
func lockWait(c *cli.Context) time.Duration {
	if !c.IsSet("lock-wait") {
		return 0
	}
	if d := c.Duration("lock-wait"); d > 0 {
		return d
	}
	return -1
}

// runTickProcess runs "bento agent run" with the trigger server's settings
// as a child process in its own process group: stopping or restarting the
// trigger server (a switch may do that) never cuts a tick short, and each
// tick reads the configuration anew. Its context carries ctx's values but
// not its cancellation, for the same reason: a tick may be switching.
func runTickProcess(ctx context.Context, c *cli.Context, out io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	var args []string
	if c.Bool("verbose") {
		args = append(args, "--verbose")
	}
	args = append(args, "agent", "run")
	for _, f := range agentConfigFlags() {
		name := f.Names()[0]
		if !c.IsSet(name) {
			continue
		}
		if _, ok := f.(*cli.BoolFlag); ok {
			args = append(args, "--"+name+"="+strconv.FormatBool(c.Bool(name)))
		} else {
			args = append(args, "--"+name, c.String(name))
		}
	}
	// No tail: out, when it is a file (the journal), is the tick's own
	// descriptor, so its log goes on when this process is gone.
	_, err = proc.Run(ctx, proc.Cmd{Argv: append([]string{exe}, args...), Stderr: out, Combined: true, TailBytes: -1, Detached: true})
	var pe *proc.Error
	if errors.As(err, &pe) && pe.ExitCode >= 0 {
		// Its output went to out already; the status is what is left to say.
		return fmt.Errorf("bento agent run exited with status %d", pe.ExitCode)
	}
	return err
}

// serverNames is the configured servers, for messages.
func serverNames(cfg agent.Config) string {
	var names []string
	for _, s := range cfg.ServerList() {
		names = append(names, s.Addr())
	}
	return strings.Join(names, ", ")
}
