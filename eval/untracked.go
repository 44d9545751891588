package eval

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/bento-nix/bento/internal/gitcmd"
)

// sourcePath finds a path inside the copy Nix makes of a flake's git
// repository: "/nix/store/<hash>-source/hosts/db-1.nix".
var sourcePath = regexp.MustCompile(`/[0-9a-df-np-sv-z]{32}-source/([^'"\s:]+)`)

// UntrackedError is an evaluation error about a file Nix could not find in
// its copy of the fleet because git does not track it (Nix copies only
// tracked files of a git repository).
type UntrackedError struct {
	// Files are the untracked files, relative to the git work tree.
	Files []string
	// Top is the work tree; Add is the command that fixes it.
	Top string
	Add string
	Err error
}

func (e *UntrackedError) Error() string {
	if len(e.Files) == 1 {
		return fmt.Sprintf("%s is not tracked by git, so Nix cannot see it: %s", e.Files[0], e.Add)
	}
	return fmt.Sprintf("%s are not tracked by git, so Nix cannot see them: %s", strings.Join(e.Files, ", "), e.Add)
}

func (e *UntrackedError) Unwrap() error { return e.Err }

// untrackedHinter turns Nix's "getting status of '/nix/store/…-source/x':
// No such file or directory" into an UntrackedError when x is (or holds)
// a file git does not track. It asks git once, and only when an error
// names such a path.
type untrackedHinter struct {
	ctx   context.Context
	dir   string // the fleet's directory
	asked bool
	top   string
	files []string
}

func (u *untrackedHinter) explain(err error) error {
	if err == nil || u.dir == "" {
		return err
	}
	var ue *UntrackedError
	if errors.As(err, &ue) {
		return err
	}
	m := sourcePath.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	u.ask()
	rel := strings.TrimSuffix(m[1], "/")
	hit := u.untrackedUnder(rel)
	if len(hit) == 0 {
		return err
	}
	shown, cmd := u.addCommand(rel, hit)
	return &UntrackedError{Files: shown, Top: u.top, Add: cmd, Err: err}
}

// ask asks git, the first time only, for the work tree's untracked files.
func (u *untrackedHinter) ask() {
	if u.asked {
		return
	}
	u.asked = true
	if top, terr := gitcmd.Top(u.ctx, u.dir); terr == nil && top != "" {
		u.top = top
		u.files, _ = gitcmd.Untracked(u.ctx, top)
	}
}

// untrackedUnder lists the untracked files that are rel or under it.
func (u *untrackedHinter) untrackedUnder(rel string) []string {
	var hit []string
	for _, f := range u.files {
		if f == rel || strings.HasPrefix(f, rel+"/") {
			hit = append(hit, f)
		}
	}
	return hit
}

// addCommand is the git add that tracks hit (the untracked files under
// rel), and the files to show: the first five and a count of the rest,
// when it adds rel whole.
func (u *untrackedHinter) addCommand(rel string, hit []string) (shown []string, cmd string) {
	add := hit
	if len(hit) > 5 {
		hit, add = append(hit[:5:5], fmt.Sprintf("and %d more", len(hit)-5)), []string{rel}
	}
	cmd = "git add " + strings.Join(add, " ")
	if filepath.Clean(u.dir) != filepath.Clean(u.top) {
		// The paths are the work tree's, not the flake directory's.
		cmd = "git -C " + u.top + " add " + strings.Join(add, " ")
	}
	return hit, cmd
}
