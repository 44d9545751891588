package status

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/bento-nix/bento/internal/termsafe"

	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
)

// DiffSides are the two systems bento diff compares, each with where it
// comes from.
type DiffSides struct {
	Host      string
	From, To  string
	FromLabel string
	ToLabel   string
	// FromHost is true when From is what the host reported (it may have
	// been built on the host and never exist on the server).
	FromHost bool
}

// Same tells whether both sides are the same system.
func (d DiffSides) Same() bool { return d.From == d.To }

// DiffTargets picks the sides of bento diff for host: the system the host
// reported against the one the server built (its build record, else the
// manifest's expected toplevel); with previous, the server's previous
// build against its last one. Each side must be in this machine's store.
func DiffTargets(root, host string, build *Build, previous bool) (DiffSides, error) {
	d := DiffSides{Host: host}
	if previous {
		err := d.previous(build) // sets d: not in the return, whose order is unspecified
		return d, err
	}
	r, err := OpenChroot(root, host)
	if err != nil {
		return d, err
	}
	defer r.Close()
	if err := d.reported(r); err != nil {
		return d, err
	}
	d.To, d.ToLabel = serverSide(r, host, build)
	if d.To == "" {
		return d, fmt.Errorf("host %s: the server has not built it (no build record, no expected system in its manifest): bento build %s", host, host)
	}
	return d, d.check()
}

// previous sets the sides to the server's previous build and its last.
func (d *DiffSides) previous(build *Build) error {
	switch {
	case build == nil:
		return fmt.Errorf("host %s: the server has no build record (bento build %s makes one)", d.Host, d.Host)
	case build.Previous == "":
		return fmt.Errorf("host %s: the server has built it only once: no previous build to compare", d.Host)
	}
	d.From, d.FromLabel = build.Previous, "the server's previous build"
	d.To, d.ToLabel = build.OutPath, "its last build"
	return d.check()
}

// reported sets the From side to the system the host reported.
func (d *DiffSides) reported(r *os.Root) error {
	host := d.Host
	data, err := readCapped(r, manifest.StatusFile, MaxReportSize)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("host %s has not reported yet: there is no running system to compare (bento status %s)", host, host)
	}
	if err != nil {
		return fmt.Errorf("host %s: unreadable report: %w", host, err)
	}
	rep, err := parseReport(data, host)
	if err != nil {
		return fmt.Errorf("host %s: unreadable report: %w", host, err)
	}
	d.From, d.FromLabel, d.FromHost = reportedSystem(rep), "the system host "+host+" reported", true
	if d.From == "" {
		return fmt.Errorf("host %s reported no system yet (its last attempt stopped at stage %s)", host, orDash(string(rep.Stage)))
	}
	return nil
}

// serverSide is the system the server built for host: its build record's,
// else the published expected system; "" when there is neither.
func serverSide(r *os.Root, host string, build *Build) (path, label string) {
	if build != nil && build.OutPath != "" {
		return build.OutPath, "the server's last build"
	}
	mdata, err := readCapped(r, manifest.ManifestFile, manifest.MaxSize)
	if err != nil {
		return "", ""
	}
	if m, err := parseManifest(mdata, host); err == nil && m.expected != "" {
		return m.expected, "the published expected system"
	}
	return "", ""
}

func (d DiffSides) check() error {
	sides := []struct {
		path, label string
		host        bool
	}{{d.From, d.FromLabel, d.FromHost}, {d.To, d.ToLabel, false}}
	for _, side := range sides {
		if err := CheckStorePath("", side.path); err != nil {
			if side.host {
				return fmt.Errorf("host %s: %w", d.Host, err)
			}
			return fmt.Errorf("host %s: %s, %q, is not a Nix store path", d.Host, side.label, termsafe.Line(side.path))
		}
		if _, err := os.Lstat(side.path); err != nil {
			hint := "it was garbage-collected here (bento build " + d.Host + " builds it again)"
			if side.host {
				hint = "the host built it itself, not what the server built, or it was garbage-collected here; nix copy --from ssh://<host> " + side.path + " brings it over"
			}
			return fmt.Errorf("host %s: %s, %s, is not in this machine's Nix store: %s", d.Host, side.label, side.path, hint)
		}
	}
	return nil
}

// Verify checks both sides as Diff does, without running the diff: so
// that nothing the host reported is shown as a system before it passed.
func (d DiffSides) Verify(ctx context.Context, r *nix.Runner) error {
	storeDir, err := StoreDir(ctx, r)
	if err != nil {
		return fmt.Errorf("host %s: %w", d.Host, err)
	}
	for _, p := range []string{d.From, d.To} {
		if err := verifyStorePath(ctx, r, storeDir, p); err != nil {
			return fmt.Errorf("host %s: %w", d.Host, err)
		}
	}
	return nil
}

// Diff prints nix store diff-closures between the two sides, once both
// are verified valid paths right under Nix's store directory: given
// anything else, Nix 2.8 would evaluate it as a flake, as root.
func Diff(ctx context.Context, r *nix.Runner, d DiffSides, w io.Writer) error {
	if err := d.Verify(ctx, r); err != nil {
		return err
	}
	if _, err := r.Run(ctx, nix.Cmd{Host: d.Host, Args: []string{"store", "diff-closures", "--", d.From, d.To}, Stdout: w}); err != nil {
		return fmt.Errorf("diff: %w", err)
	}
	return nil
}
