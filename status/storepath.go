package status

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"regexp"
	"strings"

	"github.com/bento-nix/bento/internal/termsafe"
	"github.com/bento-nix/bento/nix"
)

// InvalidSystem is what status, diff and the JSON document say of a host
// whose report names anything but a store path.
const InvalidSystem = "invalid system reported by the host"

// ErrInvalidSystem is returned (wrapped) for such a report.
var ErrInvalidSystem = errors.New(InvalidSystem)

// storeBaseRE is one store path component: a hash in Nix's base32 alphabet
// and a name of the characters Nix allows.
var storeBaseRE = regexp.MustCompile(`^[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+._?=-]+$`)

// CheckStorePath accepts p only as <storeDir>/<hash>-<name>: exactly one
// component right under the store directory, so that a host cannot name a
// directory it wrote (in its reports/, shaped like a store path) for Nix
// to evaluate as a path flake. storeDir empty checks the shape only.
func CheckStorePath(storeDir, p string) error {
	base := path.Base(p)
	dir := path.Dir(p)
	switch {
	case p == "" || !strings.HasPrefix(p, "/"):
		return fmt.Errorf("%w: %q is not an absolute store path", ErrInvalidSystem, termsafe.Line(p))
	case path.Clean(p) != p || !storeBaseRE.MatchString(base) || base == "." || base == "..":
		return fmt.Errorf("%w: %q is not a Nix store path", ErrInvalidSystem, termsafe.Line(p))
	case storeDir != "" && dir != storeDir:
		return fmt.Errorf("%w: %q is not in the Nix store %s", ErrInvalidSystem, termsafe.Line(p), storeDir)
	}
	return nil
}

// StoreDir asks Nix for its store directory (it is not always /nix/store).
func StoreDir(ctx context.Context, r *nix.Runner) (string, error) {
	out, err := r.Run(ctx, nix.Cmd{Args: []string{"eval", "--raw", "--expr", "builtins.storeDir"}})
	if err != nil {
		return "", fmt.Errorf("ask nix for its store directory: %w", err)
	}
	dir := strings.TrimSpace(string(out))
	if !strings.HasPrefix(dir, "/") || path.Clean(dir) != dir {
		return "", fmt.Errorf("nix names %q as its store directory: not an absolute path", dir)
	}
	return dir, nil
}

// verifyStorePath checks p fully before any Nix command sees it: its
// shape under storeDir, that it is no symlink, and that Nix knows it as a
// valid path (nix-store --check-validity, after --, reads the database
// and evaluates nothing).
func verifyStorePath(ctx context.Context, r *nix.Runner, storeDir, p string) error {
	if err := CheckStorePath(storeDir, p); err != nil {
		return err
	}
	st, err := os.Lstat(p)
	if err != nil {
		return fmt.Errorf("%s is not in this machine's Nix store: %w", p, err)
	}
	if st.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("%w: %s is a symlink", ErrInvalidSystem, p)
	}
	if _, err := r.Run(ctx, nix.Cmd{Tool: "nix-store", Args: []string{"--check-validity", "--", p}}); err != nil {
		return fmt.Errorf("%s is not a valid path in this machine's Nix store: %w", p, err)
	}
	return nil
}
