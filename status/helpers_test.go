package status

import (
	"testing"
	"time"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/status/internal/statustest"
)

// The fixtures live in statustest, shared with status/render and
// status/logs; these short names keep the tests of this package readable.

var now = statustest.Now

const (
	sysA = statustest.SysA
	sysB = statustest.SysB
	v1   = statustest.V1
	v2   = statustest.V2
)

// chroot writes a host's chroot files under root.
type chroot struct {
	t    testing.TB
	root string
}

func newChroot(t *testing.T) chroot {
	t.Helper()
	return chroot{t, t.TempDir()}
}

func (c chroot) st() statustest.Chroot { return statustest.Chroot{T: c.t, Root: c.root} }

func (c chroot) raw(host, rel string, data []byte) { c.t.Helper(); c.st().Raw(host, rel, data) }
func (c chroot) json(host, rel string, v any)      { c.t.Helper(); c.st().JSON(host, rel, v) }
func (c chroot) report(host string, r manifest.Report) {
	c.t.Helper()
	c.st().Report(host, r)
}

// publish writes a manifest as the publisher does, with a file list.
func (c chroot) publish(host, version string, at time.Time, expected string) {
	c.t.Helper()
	c.st().Publish(host, version, at, expected)
}

// logAt writes a log of size bytes under the host's reports/logs with the
// given modification time.
func (c chroot) logAt(host, name string, size int, at time.Time) {
	c.t.Helper()
	c.st().LogAt(host, name, size, at)
}

func applied(v, sys string, finished time.Time) manifest.Report {
	return statustest.Applied(v, sys, finished)
}

func managed(name string, interval string) fleet.Host { return statustest.Managed(name, interval) }

func rowsByHost(s *Snapshot) map[string]Row {
	m := map[string]Row{}
	for _, r := range s.Hosts {
		m[r.Host] = r
	}
	return m
}

func progressRec(host, version string, started time.Time, stage manifest.ProgressStage, stageAt time.Time) manifest.Progress {
	return manifest.Progress{Format: manifest.ProgressFormat, Host: host, Version: version, StartedAt: started, Stage: stage, StageStartedAt: stageAt, Log: version + "-x.log"}
}
