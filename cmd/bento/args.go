package main

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"strings"

	"github.com/urfave/cli/v2"
)

// completionFlag is what urfave/cli appends to ask for completions.
const completionFlag = "--generate-bash-completion"

// run runs the app on a command line made ready for it by normalizeArgs.
func run(ctx context.Context, app *cli.App, args []string) error {
	if len(args) > 1 && args[len(args)-1] == completionFlag {
		return printCompletions(app, args[1:len(args)-1])
	}
	args, err := normalizeArgs(app, args)
	if err != nil {
		return err
	}
	return explainRoot(commandName(app, args), os.Geteuid(), app.RunContext(ctx, args))
}

// normalizeArgs lets flags come anywhere after their command, as users of
// most CLIs expect ("bento status --no-color", "bento deploy web-1
// --force"): urfave/cli v2, like Go's flag package, stops at the first
// argument that is not a flag, so the flags of the last command named are
// moved before its arguments (as urfave/cli v1 did), and "--" is put
// between them so that an argument starting with "-" stays an argument.
// An explicit "--" ends the flags as usual. It also refuses an unknown
// command with one line (urfave would print the whole help and exit 3,
// which is status's "pending").
func normalizeArgs(app *cli.App, args []string) ([]string, error) {
	if len(args) < 2 {
		return args, nil
	}
	complete := args[len(args)-1] == completionFlag
	if complete {
		args = args[:len(args)-1]
	}
	globals, rest := leadingFlags(args[1:], takesValue(app.Flags))
	cmd, names, rest, err := commandPath(app, rest, complete)
	if err != nil {
		return nil, err
	}
	out := append([]string{args[0]}, globals...)
	if cmd == nil {
		return finish(append(append(out, names...), rest...), complete), nil
	}
	moved, flags, positional := splitArgs(rest, cmd.Flags, app.Flags)
	out = append(append(append(out, moved...), names...), flags...)
	if len(positional) > 0 {
		out = append(append(out, "--"), positional...)
	}
	return finish(out, complete), nil
}

// leadingFlags splits off the flags before the command.
func leadingFlags(rest []string, values map[string]bool) (flags, after []string) {
	for len(rest) > 0 && strings.HasPrefix(rest[0], "-") && rest[0] != "--" {
		n := flagWidth(rest, values)
		flags, rest = append(flags, rest[:n]...), rest[n:]
	}
	return flags, rest
}

// commandPath reads the command and its subcommands off rest: the last
// command (nil when none is named), the names read, and what follows. An
// unknown command is a usage error (not while completing).
func commandPath(app *cli.App, rest []string, complete bool) (*cli.Command, []string, []string, error) {
	cmds, path := app.Commands, "bento"
	var cmd *cli.Command
	var names []string
	for len(rest) > 0 && rest[0] != "--" {
		next := find(cmds, rest[0])
		if next == nil {
			return cmd, names, rest, unknownCommand(cmd, path, rest[0], complete)
		}
		cmd, path = next, path+" "+next.Name
		names, rest = append(names, rest[0]), rest[1:]
		cmds = next.Subcommands
	}
	return cmd, names, rest, nil
}

// unknownCommand is the error for word where a command of cmd (nil: the
// top level) is expected, or nil when word is an argument or a flag.
func unknownCommand(cmd *cli.Command, path, word string, complete bool) error {
	switch {
	case complete || strings.HasPrefix(word, "-"):
		return nil
	case cmd == nil && word == "init":
		// What a newcomer tries first: the template is Nix's to copy.
		return usageError("unknown command \"init\": a new fleet starts from the template: nix flake init -t github:bento-nix/bento")
	case cmd == nil && word != "help":
		return usageError("unknown command %q; see bento --help", word)
	case cmd != nil && len(cmd.Subcommands) > 0 && cmd.Action == nil:
		return usageError("unknown command %q; see %s --help", path+" "+word, path)
	}
	return nil
}

// splitArgs sorts what follows a command into global flags written after
// it ("bento status --verbose": they go where urfave looks for them), the
// command's own flags (and unknown ones, for urfave to refuse), and its
// arguments; "--" ends the flags.
func splitArgs(rest []string, own, global []cli.Flag) (moved, flags, positional []string) {
	ownValues, globalValues := takesValue(own), takesValue(global)
	ownNames, globalNames := flagNames(own), flagNames(global)
	for len(rest) > 0 {
		a := rest[0]
		switch {
		case a == "--":
			return moved, flags, append(positional, rest[1:]...)
		case !strings.HasPrefix(a, "-") || a == "-":
			positional, rest = append(positional, a), rest[1:]
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !ownNames[name] && globalNames[name] {
			n := flagWidth(rest, globalValues)
			moved, rest = append(moved, rest[:n]...), rest[n:]
			continue
		}
		n := flagWidth(rest, ownValues)
		flags, rest = append(flags, rest[:n]...), rest[n:]
	}
	return moved, flags, positional
}

func finish(args []string, complete bool) []string {
	if complete {
		return append(args, completionFlag)
	}
	return args
}

// flagWidth is how many arguments the flag at rest[0] takes: two when it
// takes a value given separately ("--flake dir"), else one ("--json",
// "--flake=dir", or a flag bento does not know, which urfave then refuses).
func flagWidth(rest []string, values map[string]bool) int {
	name := strings.TrimLeft(rest[0], "-")
	if strings.Contains(name, "=") {
		return 1
	}
	if values[name] && len(rest) > 1 {
		return 2
	}
	return 1
}

// takesValue maps every name of the flags that take a value.
func takesValue(flags []cli.Flag) map[string]bool {
	m := map[string]bool{}
	for _, f := range flags {
		tv, ok := f.(interface{ TakesValue() bool })
		if !ok || !tv.TakesValue() {
			continue
		}
		if g, ok := f.(*cli.GenericFlag); ok {
			// A value that says it is boolean ("--prometheus[=FILE]")
			// takes its value only after "=", as Go's flag package does.
			if b, ok := g.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
				continue
			}
		}
		for _, n := range f.Names() {
			m[n] = true
		}
	}
	return m
}

// flagNames maps every name of flags.
func flagNames(flags []cli.Flag) map[string]bool {
	m := map[string]bool{"help": true, "h": true}
	for _, f := range flags {
		for _, n := range f.Names() {
			m[n] = true
		}
	}
	return m
}

func find(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

// onUsageError turns every flag error into one line and exit status 2,
// naming the help to read, instead of urfave's whole help text.
func onUsageError(c *cli.Context, err error, _ bool) error {
	help := "bento"
	if c.Command != nil && c.Command.HelpName != "" {
		help = c.Command.HelpName
	}
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: "); ok {
		msg = "unknown flag " + name
	}
	return usageError("%s; see %s --help", msg, help)
}

// setUsageErrors gives every command onUsageError.
func setUsageErrors(cmds []*cli.Command) {
	for _, c := range cmds {
		c.OnUsageError = onUsageError
		setUsageErrors(c.Subcommands)
	}
}

// versionString is the version set at link time, or else what the Go build
// recorded: the module version (go install …@v1.2.3) and the VCS revision
// (go build in a checkout), so that a bug report can name the code.
func versionString() string {
	if version != "dev" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return version
	}
	v := bi.Main.Version
	if v == "" || v == "(devel)" {
		v = "dev"
	}
	if rev := vcsRevision(bi.Settings); rev != "" {
		return fmt.Sprintf("%s (%s)", v, rev)
	}
	return v
}

// vcsRevision is the short VCS revision the build recorded, with
// ", modified" for a dirty checkout; "" when none was recorded.
func vcsRevision(settings []debug.BuildSetting) string {
	var rev, modified string
	for _, s := range settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev == "" {
		return ""
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if modified == "true" {
		rev += ", modified"
	}
	return rev
}
