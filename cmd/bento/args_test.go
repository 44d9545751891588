package main

import (
	"reflect"
	"strings"
	"testing"
)

func TestNormalizeArgs(t *testing.T) {
	app := newApp()
	cases := []struct {
		name string
		in   []string
		want []string
		err  string
	}{
		{name: "flags first stay", in: []string{"status", "--wide", "web-1"}, want: []string{"status", "--wide", "--", "web-1"}},
		{name: "global --no-color after the command", in: []string{"status", "web-1", "--no-color"}, want: []string{"--no-color", "status", "--", "web-1"}},
		{name: "flag after a host", in: []string{"deploy", "web-1", "--force"}, want: []string{"deploy", "--force", "--", "web-1"}},
		{name: "value flag after hosts", in: []string{"hosts", "web-*", "--flake", "/srv/fleet", "--json"}, want: []string{"hosts", "--flake", "/srv/fleet", "--json", "--", "web-*"}},
		{name: "flag=value", in: []string{"hosts", "web-*", "--flake=/srv/fleet"}, want: []string{"hosts", "--flake=/srv/fleet", "--", "web-*"}},
		{name: "-- ends the flags", in: []string{"hosts", "web-1", "--", "--json"}, want: []string{"hosts", "--", "web-1", "--json"}},
		{name: "a global flag after the command", in: []string{"status", "--verbose", "web-1"}, want: []string{"--verbose", "status", "--", "web-1"}},
		{name: "subcommand", in: []string{"agent", "run", "--config", "/etc/bento/agent.json"}, want: []string{"agent", "run", "--config", "/etc/bento/agent.json"}},
		{name: "no arguments", in: []string{"status"}, want: []string{"status"}},
		{name: "a flag whose value needs =", in: []string{"status", "--prometheus", "--chroot-root", "/srv/c", "web"}, want: []string{"status", "--prometheus", "--chroot-root", "/srv/c", "--", "web"}},
		{name: "help flag after a host", in: []string{"status", "web-1", "--help"}, want: []string{"status", "--help", "--", "web-1"}},
		{name: "completion stays last", in: []string{"hosts", "web", "--generate-bash-completion"}, want: []string{"hosts", "--", "web", "--generate-bash-completion"}},
		{name: "unknown command", in: []string{"bogus"}, err: `unknown command "bogus"; see bento --help`},
		{name: "init is the template's", in: []string{"init"}, err: `unknown command "init": a new fleet starts from the template: nix flake init -t github:bento-nix/bento`},
		{name: "unknown subcommand", in: []string{"agent", "bogus"}, err: `unknown command "bento agent bogus"; see bento agent --help`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := normalizeArgs(app, append([]string{"bento"}, tc.in...))
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := append([]string{"bento"}, tc.want...); !reflect.DeepEqual(got, want) {
				t.Errorf("got %q, want %q", got, want)
			}
		})
	}
}

// Usage errors exit 2 with one line naming the help to read, never the
// whole help text.
func TestUsageErrorsAreOneLine(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, `bento: unknown command "bogus"; see bento --help`},
		{[]string{"init"}, `bento: unknown command "init": a new fleet starts from the template: nix flake init -t github:bento-nix/bento`},
		{[]string{"status", "--bogus"}, "bento: unknown flag -bogus; see bento status --help"},
		{[]string{"agent", "bogus"}, `bento: unknown command "bento agent bogus"; see bento agent --help`},
		{[]string{"status", "--stale-after", "soon"}, "see bento status --help"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			stdout, stderr, code := runCLI(t, tc.args...)
			if code != exitUsage {
				t.Errorf("exit %d, want %d", code, exitUsage)
			}
			if lines := strings.Split(strings.TrimSpace(stderr), "\n"); len(lines) != 1 || !strings.Contains(lines[0], tc.want) {
				t.Errorf("stderr %q, want one line with %q", stderr, tc.want)
			}
			if strings.Contains(stdout, "USAGE") {
				t.Errorf("the help was printed:\n%s", stdout)
			}
		})
	}
}

func TestVersionFromBuildInfo(t *testing.T) {
	stdout, _, code := runCLI(t, "--version")
	// Under go test the main module has no version; the VCS revision is
	// there when built in a checkout. Either way not a bare "dev".
	if code != 0 || !strings.HasPrefix(stdout, "bento version ") {
		t.Fatalf("bento --version: exit %d, %q", code, stdout)
	}
}
