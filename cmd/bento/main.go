// Command bento keeps a fleet of NixOS machines on the configuration of one
// flake: the server discovers, builds and publishes each host's flake into
// its own SFTP chroot, and every host pulls, switches and reports.
//
// This package only wires command-line flags to the packages that do the
// work.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/bento-nix/bento/internal/termsafe"

	"github.com/urfave/cli/v2"
)

// version is set at link time (-ldflags "-X main.version=…").
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, newApp(), os.Args)
	stop()
	os.Exit(exitCode(os.Stderr, err))
}

func newApp() *cli.App {
	app := &cli.App{
		Name:                 "bento",
		Usage:                "pull-based deployment for a fleet of NixOS machines described by one flake",
		Version:              versionString(),
		EnableBashCompletion: true,
		Suggest:              true,
		Flags:                globalFlags(),
		Commands: []*cli.Command{
			hostsCommand(),
			buildCommand(),
			deployCommand(),
			rolloutCommand(),
			exportCommand(),
			importReportsCommand(),
			checkCommand(),
			statusCommand(),
			historyCommand(),
			logsCommand(),
			diffCommand(),
			agentCommand(),
			keygenCommand(),
			mirrorCommand(),
			serveCommand(),
			completionCommand(),
		},
		// Errors are printed once, by exitCode, with their exit status.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError:   onUsageError,
	}
	setUsageErrors(app.Commands)
	return app
}

// exitError carries an exit status with an error.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// Exit statuses shared by every command. status adds its own (see status.go).
const (
	exitOK = 0
	// exitFailed: a host (or the command) failed.
	exitFailed = 1
	// exitUsage: bad flags, arguments or input.
	exitUsage = 2
)

func usageError(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

func failed(err error) error { return &exitError{code: exitFailed, err: err} }

// exitCode prints err (once) to w and returns the process exit status.
// Messages quote what hosts wrote (a log name, a report's error): every
// one goes through the sanitizer.
func exitCode(w io.Writer, err error) int {
	w = &termsafe.Writer{W: w}
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil && ee.err.Error() != "" {
			fmt.Fprintln(w, "bento:", ee.err)
		}
		return ee.code
	}
	var ce cli.ExitCoder
	if errors.As(err, &ce) {
		if err.Error() != "" {
			fmt.Fprintln(w, "bento:", err)
		}
		return ce.ExitCode()
	}
	fmt.Fprintln(w, "bento:", err)
	if errors.Is(err, context.Canceled) {
		return 130
	}
	return exitFailed
}
