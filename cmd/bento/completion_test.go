package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/fixture"
)

func TestCompletionScripts(t *testing.T) {
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"completion", "bash"}, 0, "complete -o default -F _bento_complete bento"},
		{[]string{"completion", "zsh"}, 0, "bashcompinit"},
		{[]string{"completion", "fish"}, 0, "complete -c bento -f -a '(__bento_complete)'"},
		{[]string{"completion", "tcsh"}, 2, "bento completion bash (or zsh, fish)"},
		{[]string{"completion"}, 2, "say which shell"},
	}
	for _, tc := range cases {
		stdout, stderr, code := runCLI(t, tc.args...)
		if code != tc.code || !strings.Contains(stdout+stderr, tc.want) {
			t.Errorf("bento %v: exit %d, output %q, want exit %d and %q", tc.args, code, stdout+stderr, tc.code, tc.want)
		}
	}
}

// testFleetCache writes a cache for flake ref as deploy would.
func testFleetCache(t *testing.T, dir, ref string) {
	t.Helper()
	f := &fleet.Fleet{Hosts: []fleet.Host{
		{Name: "web-1", Options: fleet.Options{Tags: []string{"web", "eu"}}},
		{Name: "web-2", Options: fleet.Options{Tags: []string{"web"}}},
		{Name: "db-1", Options: fleet.Options{Tags: []string{"db", "bad tag;rm"}}},
	}}
	if err := saveHostCache(dir, ref, f); err != nil {
		t.Fatal(err)
	}
}

func TestCompletions(t *testing.T) {
	cache := t.TempDir()
	flake := t.TempDir()
	testFleetCache(t, cache, flake)
	t.Setenv("BENTO_FLAKE", "")
	cases := []struct {
		words []string
		cur   string
		want  []string
	}{
		{nil, "", []string{"hosts", "build", "deploy", "rollout", "export", "import-reports", "check", "status", "history", "logs", "diff", "agent", "keygen", "mirror", "serve", "completion"}},
		{nil, "de", []string{"deploy"}},
		{[]string{"--verbose"}, "st", []string{"status"}},
		{[]string{"agent"}, "ru", []string{"run"}},
		{[]string{"completion"}, "", []string{"bash", "zsh", "fish"}},
		{[]string{"status"}, "--so", []string{"--sort"}},
		{[]string{"deploy"}, "--no-b", []string{"--no-build"}},
		{[]string{"status"}, "--verb", []string{"--verbose"}},
		{[]string{"status", "--sort"}, "", []string{"state", "name", "seen", "published"}},
		{[]string{"status", "--sort"}, "s", []string{"state", "seen"}},
		// zsh and fish keep "--sort=na" one word; bash splits at "=".
		{[]string{"status"}, "--sort=na", []string{"--sort=name"}},
		{[]string{"status", "--sort"}, "=", []string{"=state", "=name", "=seen", "=published"}},
		{[]string{"status", "--sort", "="}, "p", []string{"published"}},
		{[]string{"agent", "run", "--mode"}, "", []string{"build", "fetch"}},
		{[]string{"agent", "run", "--operation"}, "", []string{"switch", "boot", "test"}},
		{[]string{"agent", "run", "--reboot-policy"}, "n", []string{"never", "now"}},
		{[]string{"agent", "run", "--mode", "fetch"}, "--dr", nil},
		// Hosts of the flake named, from the cache; tags only where a
		// command takes them; a tag the shell would mangle is left out.
		{[]string{"deploy", "--flake", flake}, "", []string{"db-1", "web-1", "web-2", "@db", "@eu", "@web"}},
		{[]string{"-f", flake, "deploy", "web-1"}, "@w", []string{"@web"}},
		{[]string{"status", "--flake=" + flake}, "web", []string{"web-1", "web-2"}},
		{[]string{"logs", "--flake", flake}, "", []string{"db-1", "web-1", "web-2"}},
		{[]string{"logs", "--flake", flake, "web-1"}, "", nil},
		// -f is --flake in every command, logs too (--follow is -F).
		{[]string{"logs", "-f", flake}, "", []string{"db-1", "web-1", "web-2"}},
		{[]string{"deploy", "-f", flake, "--"}, "--w", nil},
		{[]string{"deploy", "-f", t.TempDir()}, "", nil},
		{[]string{"deploy"}, "", nil},
	}
	app := newApp()
	for _, tc := range cases {
		got := completions(app, tc.words, tc.cur, cache)
		if !slices.Equal(got, tc.want) {
			t.Errorf("completing %q after %q: %q, want %q", tc.cur, tc.words, got, tc.want)
		}
	}
	// BENTO_FLAKE names the flake as it does for the commands.
	t.Setenv("BENTO_FLAKE", flake)
	if got := completions(app, []string{"deploy"}, "d", cache); !slices.Equal(got, []string{"db-1"}) {
		t.Errorf("with BENTO_FLAKE: %q", got)
	}
}

// Every value offered is one the flag's usage names: a value added to a
// flag (or one renamed) must reach flagValues.
func TestFlagValuesMatchUsage(t *testing.T) {
	seen := map[string]bool{}
	var walk func([]*cli.Command)
	walk = func(cmds []*cli.Command) {
		for _, c := range cmds {
			for _, f := range c.Flags {
				vals, ok := flagValues[f.Names()[0]]
				if !ok {
					continue
				}
				seen[f.Names()[0]] = true
				usage := f.(cli.DocGenerationFlag).GetUsage()
				for _, v := range vals {
					if !strings.Contains(usage, v) {
						t.Errorf("%s --%s: usage %q does not name %q", c.Name, f.Names()[0], usage, v)
					}
				}
			}
			walk(c.Subcommands)
		}
	}
	walk(newApp().Commands)
	for name := range flagValues {
		if !seen[name] {
			t.Errorf("flagValues has --%s, which no command has", name)
		}
	}
}

// The cache is written by bento and read by a shell: whatever is in its
// place is bounded, checked, and never blocks.
func TestHostCacheHostile(t *testing.T) {
	cache, flake := t.TempDir(), t.TempDir()
	path := hostCachePath(cache, flake)
	cases := []struct {
		name  string
		setup func() error
		want  []string
	}{
		{"missing", func() error { return nil }, nil},
		{"fifo", func() error { return syscall.Mkfifo(path, 0o600) }, nil},
		{"not json", func() error { return os.WriteFile(path, []byte("{"), 0o600) }, nil},
		{"too big", func() error { return os.WriteFile(path, make([]byte, hostCacheMax+1), 0o600) }, nil},
		{"another flake's", func() error {
			return os.WriteFile(path, []byte(`{"flake":"/elsewhere","hosts":["a"]}`), 0o600)
		}, nil},
		{"bad names dropped", func() error {
			return os.WriteFile(path, []byte(`{"flake":"`+flake+`","hosts":["ok","$(reboot)","../x","-rf"],"tags":["t","a b"]}`), 0o600)
		}, []string{"ok", "@t"}},
	}
	app := newApp()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(path)
			if err := tc.setup(); err != nil {
				t.Fatal(err)
			}
			got := completions(app, []string{"deploy", "-f", flake}, "", cache)
			if !slices.Equal(got, tc.want) {
				t.Errorf("%q, want %q", got, tc.want)
			}
		})
	}
}

// buildBento builds the real binary for the shell tests.
func buildBento(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "bento")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// The scripts complete through the real binary in the real shells:
// `bento hosts` evaluates a fixture fleet and leaves the cache, and the
// shell's completion function then offers its hosts and tags.
func TestShellCompletion(t *testing.T) {
	bin := buildBento(t)
	cacheHome := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", cacheHome)
	flake := t.TempDir()
	err := fixture.Write(flake, fixture.Fleet{Hosts: []fixture.Host{
		{Name: "web-1", Bento: &fixture.Bento{Enable: true, Tags: []string{"web"}}},
		{Name: "db-1", Bento: &fixture.Bento{Enable: true, Tags: []string{"db"}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := runCLI(t, "hosts", "--flake", flake); code != 0 {
		t.Fatalf("bento hosts: exit %d: %s", code, stderr)
	}
	t.Setenv("BENTO_FLAKE", "")
	cases := []struct {
		words []string // as typed; the last is the word being completed
		want  string
	}{
		{[]string{"dep"}, "deploy"},
		{[]string{"status", "--sort", "pu"}, "published"},
		{[]string{"status", "--sort", "=", ""}, "state name seen published"},
		{[]string{"agent", "run", "--reboot-policy", "w"}, "window"},
		{[]string{"deploy", "-f", flake, ""}, "db-1 web-1 @db @web"},
		{[]string{"deploy", "-f", flake, "@w"}, "@web"},
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		path, err := exec.LookPath(shell)
		if err != nil {
			// Not every machine has zsh and fish (apt-get install zsh
			// fish); bash always runs, and the others wherever present.
			if shell == "bash" {
				t.Fatal(err)
			}
			continue
		}
		script, _, _ := runCLI(t, "completion", shell)
		for _, tc := range cases {
			out, err := exec.Command(path, "-c", shellComplete(shell, script, bin, tc.words)).CombinedOutput()
			// fish sorts the candidates; the others keep bento's order.
			got, want := strings.Fields(string(out)), strings.Fields(tc.want)
			slices.Sort(got)
			slices.Sort(want)
			if err != nil || !slices.Equal(got, want) {
				t.Errorf("%s completing %q: %q, %v; want %q", shell, tc.words, out, err, tc.want)
			}
		}
	}
}

// shellComplete is a shell program that loads script and completes words
// as the shell would at the end of "bento words…", printing the candidates.
func shellComplete(shell, script, bin string, words []string) string {
	q := func(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
	var quoted []string
	for _, w := range words {
		quoted = append(quoted, q(w))
	}
	switch shell {
	case "fish":
		// fish's complete -C runs the registered completion for a command line.
		// complete -C sees the line as typed, quotes and all: the words here
		// need none.
		line := strings.Join(append([]string{"bento"}, words...), " ")
		return "set -x PATH " + q(filepath.Dir(bin)) + " $PATH\n" + script + "\ncomplete -C " + q(line) + "\n"
	case "zsh":
		// bashcompinit runs bash functions with sh emulation (0-based arrays).
		return script + "\nemulate sh -c 'COMP_WORDS=(" + strings.ReplaceAll(q(bin)+" "+strings.Join(quoted, " "), "'", `'\''`) +
			"); COMP_CWORD=" + itoa(len(words)) + "; _bento_complete; printf \"%s\\n\" \"${COMPREPLY[@]}\"'\n"
	}
	return script + "\nCOMP_WORDS=(" + q(bin) + " " + strings.Join(quoted, " ") + "); COMP_CWORD=" + itoa(len(words)) +
		"; _bento_complete; printf '%s\\n' \"${COMPREPLY[@]}\"\n"
}

func itoa(n int) string { return strconv.Itoa(n) }

// deploy leaves the cache on both of its discovery paths (with a build,
// and --no-build), so that a fleet never listed with bento hosts completes
// too.
func TestDeployWritesHostCache(t *testing.T) {
	requireRootCLI(t)
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	e := newDeployEnv(t, hostsOf("alpha", "beta"))
	dir, err := hostCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	for _, extra := range [][]string{{"--dry-run"}, {"--dry-run", "--no-build"}} {
		os.RemoveAll(dir)
		if stdout, stderr, code := runCLI(t, e.args(extra...)...); code != 0 {
			t.Fatalf("deploy %v: exit %d\n%s\n%s", extra, code, stdout, stderr)
		}
		if got := loadHostCache(dir, e.fleet).Hosts; !slices.Equal(got, []string{"alpha", "beta"}) {
			t.Errorf("deploy %v: cached hosts %q, want alpha and beta", extra, got)
		}
	}
}
