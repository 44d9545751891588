package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
)

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script (bash, zsh or fish)",
		ArgsUsage: "bash|zsh|fish",
		Description: "bash: source <(bento completion bash)\n" +
			"zsh:  source <(bento completion zsh)\n" +
			"fish: bento completion fish | source\n" +
			"Host names and @tags come from a cache that bento hosts and bento deploy\n" +
			"write ($XDG_CACHE_HOME/bento): completing never evaluates the fleet.",
		Action: func(c *cli.Context) error {
			switch c.Args().First() {
			case "bash":
				_, err := fmt.Fprint(c.App.Writer, bashCompletion)
				return err
			case "zsh":
				_, err := fmt.Fprint(c.App.Writer, "autoload -U compinit && compinit\nautoload -U bashcompinit && bashcompinit\n"+bashCompletion)
				return err
			case "fish":
				_, err := fmt.Fprint(c.App.Writer, fishCompletion)
				return err
			default:
				return usageError("completion: say which shell: bento completion bash (or zsh, fish)")
			}
		},
	}
}

// The scripts ask bento itself: the words before the cursor, then the
// word being completed (possibly empty), then urfave/cli's
// --generate-bash-completion. bento prints one candidate a line, already
// filtered by the word's prefix; an empty answer lets bash fall back to
// file names (-o default), which is what --flake and --config want.
const bashCompletion = `_bento_complete() {
  local cur="${COMP_WORDS[COMP_CWORD]}" IFS=$'\n'
  COMPREPLY=($("${COMP_WORDS[0]}" "${COMP_WORDS[@]:1:$((COMP_CWORD-1))}" "${cur}" --generate-bash-completion 2>/dev/null))
  return 0
}
complete -o default -F _bento_complete bento
`

const fishCompletion = `function __bento_complete
  set -l words (commandline -opc)
  set -l cur (commandline -ct)
  command $words[1] $words[2..-1] "$cur" --generate-bash-completion 2>/dev/null
end
complete -c bento -f -a '(__bento_complete)'
`

// flagValues are the values of the flags that take one of a few words.
// agent.Keys has no list of values, so the agent's are written here; the
// completion test checks each against the flag's usage text.
var flagValues = map[string][]string{
	"sort":          {"state", "name", "seen", "published"},
	"mode":          {"build", "fetch"},
	"operation":     {"switch", "boot", "test"},
	"reboot-policy": {"never", "now", "window"},
}

// printCompletions answers the completion scripts: args are the words
// after "bento", the last being the word under the cursor.
func printCompletions(app *cli.App, args []string) error {
	var cur string
	if len(args) > 0 {
		args, cur = args[:len(args)-1], args[len(args)-1]
	}
	w := app.Writer
	if w == nil { // set by urfave's Setup, which RunContext would call
		w = os.Stdout
	}
	dir, _ := hostCacheDir()
	for _, c := range completions(app, args, cur, dir) {
		if _, err := fmt.Fprintln(w, c); err != nil {
			return err
		}
	}
	return nil
}

// completions are the candidates for cur after words: the values of the
// flag before it, flags when it starts with "-", else subcommands or, for
// a command taking hosts, the fleet's host names and @tags from the cache
// in cacheDir (never an evaluation).
func completions(app *cli.App, words []string, cur, cacheDir string) []string {
	l := readLine(app, words)
	switch {
	case l.pending != "":
		return flagValueCompletions(l.pending, cur)
	case !l.endFlags && strings.HasPrefix(cur, "-"):
		return flagCompletions(l.flags, cur)
	case l.cmd == nil:
		return matching(commandNames(app.Commands), "", cur)
	case len(l.cmd.Subcommands) > 0 && l.positional == 0:
		return matching(commandNames(l.cmd.Subcommands), "", cur)
	case l.cmd.Name == "completion" && l.positional == 0:
		return matching([]string{"bash", "zsh", "fish"}, "", cur)
	case strings.Contains(l.cmd.ArgsUsage, "HOST"):
		return hostCompletions(l, cur, cacheDir)
	}
	return nil
}

// flagValueCompletions are the values of the flag pending for cur.
func flagValueCompletions(pending, cur string) []string {
	// bash's word for "--sort=" is "=": it is replaced by "=name".
	prefix := ""
	if strings.HasPrefix(cur, "=") {
		prefix = "="
	}
	return matching(flagValues[pending], prefix, strings.TrimPrefix(cur, "="))
}

// hostCompletions are the cached host names (and @tags, where the
// command takes them) starting with cur.
func hostCompletions(l line, cur, cacheDir string) []string {
	// "HOST [NAME]" takes one host; "[HOST|GLOB|@TAG]..." any number.
	if strings.HasPrefix(l.cmd.ArgsUsage, "HOST") && l.positional > 0 {
		return nil
	}
	hc := loadHostCache(cacheDir, l.flake)
	all := hc.Hosts
	if strings.Contains(l.cmd.ArgsUsage, "@TAG") {
		for _, t := range hc.Tags {
			all = append(all, "@"+t)
		}
	}
	return matching(all, "", cur)
}

// line is what the words before the cursor say.
type line struct {
	cmd        *cli.Command // the last command named; nil: none
	flags      []cli.Flag   // the flags it (and the top level) takes
	flake      string       // --flake as given, else $BENTO_FLAKE
	pending    string       // a flag whose value is the word being completed
	positional int          // arguments after cmd
	endFlags   bool         // "--" was given
}

// readLine reads the words as bento would: commands, flags (a flag bento
// does not know is taken as one without value), and arguments.
func readLine(app *cli.App, words []string) line {
	r := lineReader{line: line{flags: app.Flags, flake: os.Getenv("BENTO_FLAKE")}, app: app, cmds: app.Commands}
	for _, w := range words {
		r.read(w)
	}
	return r.line
}

// lineReader reads a line's words one at a time.
type lineReader struct {
	line
	app  *cli.App
	cmds []*cli.Command // the subcommands of cmd (of app before one)
}

func (r *lineReader) read(w string) {
	switch {
	case r.pending != "":
		r.readValue(w)
	case r.endFlags || !strings.HasPrefix(w, "-") || w == "-":
		r.readArg(w)
	case w == "--":
		r.endFlags = true
	default:
		r.readFlag(w)
	}
}

// readValue reads the value of the pending flag.
func (r *lineReader) readValue(w string) {
	// bash splits "--sort=name" into "--sort", "=", "name".
	if w == "=" {
		return
	}
	if r.pending == "flake" {
		r.flake = w
	}
	r.pending = ""
}

// readArg reads a command's name or an argument.
func (r *lineReader) readArg(w string) {
	if next := find(r.cmds, w); next != nil && r.positional == 0 && !r.endFlags {
		r.cmd, r.cmds = next, next.Subcommands
		r.flags = append(append([]cli.Flag{}, next.Flags...), r.app.Flags...)
		return
	}
	r.positional++
}

// readFlag reads a flag, with its value when it is given in the word.
func (r *lineReader) readFlag(w string) {
	name, value, hasValue := strings.Cut(strings.TrimLeft(w, "-"), "=")
	f := lookupFlag(r.flags, name)
	if f == nil || !takesValue([]cli.Flag{f})[name] {
		return
	}
	switch name = f.Names()[0]; {
	case !hasValue:
		r.pending = name
	case name == "flake":
		r.flake = value
	}
}

// flagCompletions are the flags starting with cur, or with "--name=" the
// values of that flag (zsh and fish keep "--sort=na" one word).
func flagCompletions(flags []cli.Flag, cur string) []string {
	if name, value, ok := strings.Cut(strings.TrimLeft(cur, "-"), "="); ok {
		if f := lookupFlag(flags, name); f != nil {
			return matching(flagValues[f.Names()[0]], cur[:len(cur)-len(value)], value)
		}
		return nil
	}
	all := []string{"--help"}
	for _, f := range flags {
		if v, ok := f.(cli.VisibleFlag); !ok || v.IsVisible() {
			all = append(all, "--"+f.Names()[0])
		}
	}
	return matching(all, "", cur)
}

// matching is prefix+c for every candidate c starting with typed, in
// order; for a shell that inserts whole words, prefix repeats what cur
// had before the value ("--sort=").
func matching(cands []string, prefix, typed string) []string {
	var out []string
	for _, c := range cands {
		if strings.HasPrefix(c, typed) {
			out = append(out, prefix+c)
		}
	}
	return out
}

func lookupFlag(flags []cli.Flag, name string) cli.Flag {
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
}

func commandNames(cmds []*cli.Command) []string {
	var out []string
	for _, c := range cmds {
		if !c.Hidden {
			out = append(out, c.Name)
		}
	}
	return out
}
