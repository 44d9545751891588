package status

import (
	"fmt"
	"os"
	"time"

	"github.com/bento-nix/bento/manifest"
)

// MaxTickDuration bounds how long live progress counts: the agent's
// default services.bento.timeout. A progress record whose attempt started
// longer ago is what a killed or cut-off tick left, and is ignored.
const MaxTickDuration = 2 * time.Hour

// Progress is the stage of a tick under way on the host, from its
// reports/progress.json.
type Progress struct {
	Stage   string `json:"stage"`
	Version string `json:"version"`
	// StartedAt is when the attempt started, StageStartedAt when its
	// current stage did (by the host's clock).
	StartedAt      time.Time `json:"startedAt"`
	StageStartedAt time.Time `json:"stageStartedAt"`
	// Log is the attempt's log as it grows under reports/logs/ (bento
	// logs --follow prints it).
	Log string `json:"log,omitempty"`
}

// ReadProgress reads a host's progress.json below its chroot r. A missing
// file is (nil, nil); a damaged or hostile one is an error.
func ReadProgress(r *os.Root, host string) (*manifest.Progress, error) {
	data, err := readCapped(r, manifest.ProgressFile, manifest.MaxProgressSize)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	return manifest.ParseProgress(data, host)
}

// LiveProgress is p when it describes a tick still under way: newer than
// the last report (whose attempt it would otherwise be) and within
// MaxTickDuration of now. Nil otherwise.
func LiveProgress(p *manifest.Progress, rep *manifest.Report, now time.Time) *manifest.Progress {
	switch {
	case p == nil:
		return nil
	case rep != nil && !p.StartedAt.After(rep.StartedAt):
		return nil
	case now.Sub(p.StartedAt) > MaxTickDuration:
		return nil
	}
	return p
}

// progressMessage is what a row says of a tick under way:
// "updating: building (45s)".
func progressMessage(p *Progress, now time.Time) string {
	return fmt.Sprintf("updating: %s (%s)", p.Stage, Ago(now.Sub(p.StageStartedAt)))
}
