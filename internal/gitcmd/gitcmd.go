// Package gitcmd answers, with git itself, what Nix copies into its store
// from a flake in a git work tree: the files in git's index (committed or
// staged), read from the work tree. Untracked files do not exist for Nix,
// and submodules are left out unless the flake URL says ?submodules=1.
// Publishing, the secrets guard and evaluation all ask it, so that they
// agree on what Nix sees.
package gitcmd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bento-nix/bento/internal/proc"
)

// Top returns the top of the git work tree holding dir, "" when there is
// none. Like Nix, it takes a .git entry in dir or a directory above for a
// work tree, and only then asks git; a git that fails there is an error
// (not installed, a repository it refuses), not "no work tree".
func Top(ctx context.Context, dir string) (string, error) {
	found := false
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Lstat(filepath.Join(d, ".git")); err == nil {
			found = true
			break
		}
		if d == filepath.Dir(d) {
			break
		}
	}
	if !found {
		return "", nil
	}
	out, err := run(ctx, dir, "rev-parse", "--show-toplevel")
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

// Tracked lists what git's index holds under dir (limited to paths when
// given): files relative to dir, slash-separated, sorted and unique, and
// apart from them the submodules, which Nix leaves out by default.
func Tracked(ctx context.Context, dir string, paths ...string) (files, submodules []string, err error) {
	if len(paths) == 0 {
		paths = []string{"."}
	}
	out, err := run(ctx, dir, append([]string{"ls-files", "-z", "--stage", "--"}, paths...)...)
	if err != nil {
		return nil, nil, err
	}
	seen := map[string]bool{}
	for _, rec := range strings.Split(string(out), "\x00") {
		// "<mode> <object> <stage>\t<path>"; a conflicted file has one
		// record per stage.
		meta, p, ok := strings.Cut(rec, "\t")
		if !ok || seen[p] {
			continue
		}
		seen[p] = true
		if strings.HasPrefix(meta, "160000 ") {
			submodules = append(submodules, p)
		} else {
			files = append(files, p)
		}
	}
	sort.Strings(files)
	sort.Strings(submodules)
	return files, submodules, nil
}

// Untracked lists the files under dir that git neither tracks nor
// ignores: what a user may have forgotten to git add.
func Untracked(ctx context.Context, dir string) ([]string, error) {
	out, err := run(ctx, dir, "ls-files", "-z", "--others", "--exclude-standard", "--", ".")
	if err != nil {
		return nil, err
	}
	var files []string
	for _, p := range strings.Split(string(out), "\x00") {
		if p != "" {
			files = append(files, p)
		}
	}
	return files, nil
}

// Ignored reports whether git ignores path (.gitignore and the like).
func Ignored(ctx context.Context, dir, path string) (bool, error) {
	_, err := run(ctx, dir, "check-ignore", "-q", "--", path)
	var pe *proc.Error
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &pe) && pe.ExitCode == 1:
		// check-ignore's answer "not ignored", not a failure.
		return false, nil
	}
	return false, err
}

func run(ctx context.Context, dir string, args ...string) ([]byte, error) {
	res, err := proc.Run(ctx, proc.Cmd{Argv: append([]string{"git", "-C", dir}, args...), TailBytes: 4 << 10})
	if errors.Is(err, proc.ErrNotFound) {
		return nil, fmt.Errorf("%s is in a git repository but git is not installed: bento needs it to list the files Nix sees (apt-get install git)", dir)
	}
	if err != nil {
		return nil, err
	}
	return res.Stdout, nil
}
