package deploy

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/publish"
)

// Row is one host's line: its build (when one ran) and publication
// (status, version, previous version, expected system, what was copied,
// linked and shared, the bytes written, the error).
type Row struct {
	publish.Result
	// BuildFailed: the build failed; with Force the host was published
	// anyway, otherwise its previous publication stays.
	BuildFailed bool            `json:"buildFailed,omitempty"`
	Build       *builder.Result `json:"build,omitempty"`
	// CopyError: built and published, but not copied to the build's
	// CopyTo.
	CopyError string `json:"copyError,omitempty"`
}

// NeedsAttention: the host failed, was published despite a failed build,
// or was not copied to the cache.
func (r Row) NeedsAttention() bool { return !r.OK() || r.BuildFailed || r.CopyError != "" }

// ErrorDetail is the row's error for a line that already names the host:
// a failure of this host at the publish stage gives its cause, one at
// another stage "stage: cause".
func (r Row) ErrorDetail() string {
	if r.Err == nil {
		return ""
	}
	var he *fleet.HostError
	if errors.As(r.Err, &he) && he.Host == r.Host {
		if he.Stage == publish.Stage {
			return fmt.Sprint(he.Err)
		}
		return he.Detail()
	}
	return r.Err.Error()
}

func (r Row) MarshalJSON() ([]byte, error) {
	type plain Row
	out := struct {
		plain
		OK    bool   `json:"ok"`
		Error string `json:"error,omitempty"`
	}{plain: plain(r), OK: !r.NeedsAttention(), Error: r.ErrorDetail()}
	return json.Marshal(out)
}

func failedResult(host string, err error) publish.Result {
	return publish.Result{Host: host, Status: publish.StatusFailed, Err: err}
}

// Report is what a deploy did.
type Report struct {
	OK     bool   `json:"ok"`
	DryRun bool   `json:"dryRun"`
	Root   string `json:"chrootRoot"`
	// DeployRun names this run's publications in the server's history
	// (bento history); "" for a dry run.
	DeployRun string `json:"deployRun,omitempty"`
	// Hosts has a row per deployed host: the planned ones in the fleet's
	// order, then the refused ones.
	Hosts   []Row            `json:"hosts"`
	Skipped []Skipped        `json:"skipped"`
	Orphans []publish.Orphan `json:"orphans"`
	Pruned  []string         `json:"pruned"`
	// Kept are the orphans --prune left alone because only their reports/
	// are left, which only --prune-reports removes: "pruned" again on every
	// run would say something was removed when nothing was.
	Kept        []string `json:"kept"`
	PruneErrors []string `json:"pruneErrors,omitempty"`
	// Warnings are all of them; the first RootWarnings are the chroot
	// root's, known (and printed) before the build.
	Warnings     []string `json:"warnings"`
	RootWarnings []string `json:"-"`
	Notes        []string `json:"notes"`
	// Builds are the builds in the order they ran (none without a build).
	Builds []builder.Result `json:"-"`
	// EvalFailed: some hosts did not evaluate, so were not deployed.
	EvalFailed bool `json:"-"`
}

// LateWarnings are the warnings that came after the build.
func (r *Report) LateWarnings() []string { return r.Warnings[len(r.RootWarnings):] }

// Failure names what needs attention (failed hosts first, then prune
// errors, then hosts that did not evaluate); nil when nothing does.
func (r *Report) Failure() error {
	if err := rowsFailure(r.Hosts); err != nil {
		return err
	}
	if len(r.PruneErrors) > 0 {
		return errors.New(strings.Join(r.PruneErrors, "; "))
	}
	if r.EvalFailed {
		return errors.New("some hosts could not be evaluated and were not deployed (see above)")
	}
	return nil
}

// rowsFailure names the hosts that failed (build or publication).
func rowsFailure(rows []Row) error {
	var failedHosts, forced, notCopied []string
	for _, r := range rows {
		switch {
		case !r.OK():
			failedHosts = append(failedHosts, r.Host)
		case r.BuildFailed:
			forced = append(forced, r.Host)
		case r.CopyError != "":
			notCopied = append(notCopied, r.Host)
		}
	}
	var parts []string
	if len(failedHosts) > 0 {
		parts = append(parts, fmt.Sprintf("%d of %d hosts failed and keep their previous publication: %s", len(failedHosts), len(rows), strings.Join(failedHosts, ", ")))
	}
	if len(forced) > 0 {
		parts = append(parts, fmt.Sprintf("%d hosts were published although their build failed: %s", len(forced), strings.Join(forced, ", ")))
	}
	if len(notCopied) > 0 {
		parts = append(parts, fmt.Sprintf("%d hosts were built and published but not copied to the cache: %s", len(notCopied), strings.Join(notCopied, ", ")))
	}
	if len(parts) == 0 {
		return nil
	}
	return errors.New(strings.Join(parts, "; "))
}

// hostNotes gathers the trees' notes once each: every host of a flake
// shares one tree, and one line about untracked files is enough.
func hostNotes(rows []Row) []string {
	seen := map[string]bool{}
	var out []string
	for _, r := range rows {
		for _, n := range r.Notes {
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out
}
