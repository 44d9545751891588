package gitcmd

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func git(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "protocol.file.allow=always"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
}

func write(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// repo is a work tree with a committed file, a staged one, an untracked
// one, an ignored one and a submodule: everything Nix treats differently.
func repo(t *testing.T) string {
	t.Helper()
	sub := filepath.Join(t.TempDir(), "sub")
	write(t, filepath.Join(sub, "lib.nix"), "{}")
	git(t, sub, "init", "-q")
	git(t, sub, "add", ".")
	git(t, sub, "commit", "-qm", "sub")

	dir := filepath.Join(t.TempDir(), "fleet")
	write(t, filepath.Join(dir, "flake.nix"), "{}")
	write(t, filepath.Join(dir, ".gitignore"), "/secrets/\n")
	write(t, filepath.Join(dir, "hosts", "a.nix"), "{}")
	git(t, dir, "init", "-q")
	git(t, dir, "add", ".")
	git(t, dir, "commit", "-qm", "one")
	write(t, filepath.Join(dir, "hosts", "b.nix"), "{}")
	git(t, dir, "add", "hosts/b.nix")
	write(t, filepath.Join(dir, "hosts", "new.nix"), "{}")
	write(t, filepath.Join(dir, "secrets", "k"), "secret")
	git(t, dir, "submodule", "add", "-q", sub, "vendor/sub")
	return dir
}

func TestTracked(t *testing.T) {
	dir := repo(t)
	ctx := context.Background()
	tests := []struct {
		name           string
		dir            string
		paths          []string
		wantFiles      []string
		wantSubmodules []string
	}{
		{
			name:           "whole tree: committed and staged, submodules apart",
			dir:            dir,
			wantFiles:      []string{".gitignore", ".gitmodules", "flake.nix", "hosts/a.nix", "hosts/b.nix"},
			wantSubmodules: []string{"vendor/sub"},
		},
		{name: "relative to a subdirectory", dir: filepath.Join(dir, "hosts"), wantFiles: []string{"a.nix", "b.nix"}},
		{name: "limited to a path", dir: dir, paths: []string{"flake.nix"}, wantFiles: []string{"flake.nix"}},
		{name: "an untracked path", dir: dir, paths: []string{filepath.Join(dir, "secrets")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			files, subs, err := Tracked(ctx, tc.dir, tc.paths...)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(files, tc.wantFiles) || !reflect.DeepEqual(subs, tc.wantSubmodules) {
				t.Errorf("files %q, submodules %q; want %q, %q", files, subs, tc.wantFiles, tc.wantSubmodules)
			}
		})
	}
	untracked, err := Untracked(ctx, dir)
	if err != nil || !reflect.DeepEqual(untracked, []string{"hosts/new.nix"}) {
		t.Errorf("Untracked = %q, %v; want only hosts/new.nix (secrets/ is ignored)", untracked, err)
	}
}

func TestTop(t *testing.T) {
	dir := repo(t)
	plain := t.TempDir()
	ctx := context.Background()
	for _, tc := range []struct{ dir, want string }{
		{dir, dir},
		{filepath.Join(dir, "hosts"), dir},
		{plain, ""},
	} {
		got, err := Top(ctx, tc.dir)
		if err != nil || got != tc.want {
			t.Errorf("Top(%s) = %q, %v; want %q", tc.dir, got, err, tc.want)
		}
	}
	// A work tree that git cannot read is an error, not "no work tree".
	broken := t.TempDir()
	write(t, filepath.Join(broken, ".git"), "gitdir: /nonexistent\n")
	if top, err := Top(ctx, broken); err == nil || !strings.Contains(err.Error(), "git -C "+broken+" rev-parse --show-toplevel exited with status 128") {
		t.Errorf("broken work tree: %q, %v; want git's failure quoted", top, err)
	}
	t.Setenv("PATH", "")
	if _, err := Top(ctx, dir); err == nil || !strings.Contains(err.Error(), "git is not installed") {
		t.Errorf("without git: %v", err)
	}
}

func TestIgnored(t *testing.T) {
	dir := repo(t)
	ctx := context.Background()
	for _, tc := range []struct {
		path string
		want bool
	}{
		{filepath.Join(dir, "secrets"), true},
		{filepath.Join(dir, "secrets", "k"), true},
		{filepath.Join(dir, "hosts", "new.nix"), false},
		{filepath.Join(dir, "flake.nix"), false},
	} {
		got, err := Ignored(ctx, dir, tc.path)
		if err != nil || got != tc.want {
			t.Errorf("Ignored(%s) = %v, %v; want %v", tc.path, got, err, tc.want)
		}
	}
	if _, err := Ignored(ctx, dir, "/elsewhere"); err == nil {
		t.Error("a path outside the work tree: want git's error")
	}
}
