// Package statustest writes hosts' chroots as the publisher and the agents
// do, for the tests of status and of the packages that render and read
// what it collects. It imports neither, so all of them can use it.
package statustest

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/manifest"
)

// Now is the fixed clock of every test.
var Now = time.Date(2025, 3, 14, 12, 0, 0, 0, time.UTC)

// Systems and versions the fixtures publish and report.
const (
	SysA = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a-1"
	SysB = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b-2"
	V1   = "1111111111111111aaaa"
	V2   = "2222222222222222bbbb"
)

// Chroot writes hosts' chroot files under Root.
type Chroot struct {
	T    testing.TB
	Root string
}

// New is a Chroot in a fresh temporary directory.
func New(t testing.TB) Chroot {
	t.Helper()
	return Chroot{t, t.TempDir()}
}

// Raw writes data as host's file rel.
func (c Chroot) Raw(host, rel string, data []byte) {
	c.T.Helper()
	p := filepath.Join(c.Root, host, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		c.T.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		c.T.Fatal(err)
	}
}

// JSON writes v as host's file rel.
func (c Chroot) JSON(host, rel string, v any) {
	c.T.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		c.T.Fatal(err)
	}
	c.Raw(host, rel, data)
}

// Publish writes a manifest as the publisher does, with a file list.
func (c Chroot) Publish(host, version string, at time.Time, expected string) {
	c.T.Helper()
	c.JSON(host, manifest.ManifestFile, manifest.Manifest{
		Format: manifest.Format, Host: host, Version: version, PublishedAt: at,
		ExpectedToplevel: expected, Flake: manifest.Flake{Attr: fleet.ConfigAttr(host)},
		Files: []manifest.File{{Path: "flake.nix", Mode: 0o644, Size: 10, SHA256: "0000000000000000000000000000000000000000000000000000000000000000"}},
	})
	if err := os.MkdirAll(filepath.Join(c.Root, host, manifest.ReportsDir), 0o755); err != nil {
		c.T.Fatal(err)
	}
}

// Report writes r as host's status.json, filling in its format and host.
func (c Chroot) Report(host string, r manifest.Report) {
	c.T.Helper()
	if r.Format == 0 {
		r.Format = manifest.Format
	}
	if r.Host == "" {
		r.Host = host
	}
	c.JSON(host, manifest.StatusFile, r)
}

// LogAt writes a log of size bytes under the host's reports/logs with the
// given modification time.
func (c Chroot) LogAt(host, name string, size int, at time.Time) {
	c.T.Helper()
	rel := filepath.Join(manifest.LogsDir, name)
	c.Raw(host, rel, bytes.Repeat([]byte("x"), size))
	if err := os.Chtimes(filepath.Join(c.Root, host, rel), at, at); err != nil {
		c.T.Fatal(err)
	}
}

// Applied is the report of a host that applied version v and runs sys.
func Applied(v, sys string, finished time.Time) manifest.Report {
	return manifest.Report{
		SeenVersion: v, AppliedVersion: v, AttemptedVersion: v,
		Stage: manifest.StageConfirmed, Result: manifest.ResultSuccess,
		ExpectedToplevel: sys, ActualToplevel: sys, CurrentSystem: sys, BootedSystem: sys,
		Operation: "switch", StartedAt: finished.Add(-time.Minute), FinishedAt: finished,
	}
}

// Managed is a managed, enabled fleet host polling at interval.
func Managed(name string, interval string) fleet.Host {
	return fleet.Host{Name: name, Managed: true, Enable: true, Attr: fleet.ConfigAttr(name), Options: fleet.Options{Interval: interval}}
}

// GoldenFleet is a chroot root with a host in nearly every state, a
// version made of wide characters and emoji, and a long message.
func GoldenFleet(t testing.TB) (string, *fleet.Fleet) {
	c := New(t)
	ago := func(d time.Duration) time.Time { return Now.Add(-d) }
	c.Publish("web-1", V1, ago(2*time.Hour), SysA)
	c.Report("web-1", Applied(V1, SysA, ago(3*time.Minute)))

	c.Publish("web-2", V2, ago(10*time.Minute), SysB)
	c.Report("web-2", Applied(V1, SysA, ago(2*time.Hour+5*time.Minute-time.Hour)))

	c.Publish("db", V2, ago(10*time.Minute), SysB)
	r := Applied(V1, SysA, ago(4*time.Minute))
	r.SeenVersion, r.AttemptedVersion, r.Stage, r.Result = V2, V2, manifest.StageFailed, manifest.ResultFailure
	r.Error = "build: error: builder for '/nix/store/q3x…-nixos-system-db.drv' failed with exit code 1; last 10 log lines: fixture: build of db fails on purpose"
	c.Report("db", r)

	c.Publish("cupboard-pi", V1, ago(5*24*time.Hour), SysA)
	c.Report("cupboard-pi", Applied(V1, SysA, ago(4*24*time.Hour)))

	c.Publish("kiosk", V1, ago(time.Hour), SysA)
	r = Applied("版本🍱ab", SysA, ago(30*time.Second))
	r.SeenVersion, r.AttemptedVersion = V1, V1
	r.Stage, r.Result, r.RollbackReason, r.Error = manifest.StageRolledBack, manifest.ResultRolledBack, "activation-failed", "fixture: activation of kiosk fails on purpose"
	c.Report("kiosk", r)

	c.Publish("gpu", V1, ago(time.Hour), SysA)
	c.Report("gpu", Applied(V1, SysB, ago(time.Minute)))

	c.Publish("edge", V1, ago(time.Hour), SysA)
	r = Applied(V1, SysA, ago(7*time.Minute))
	r.RebootRequired = true
	c.Report("edge", r)

	c.Publish("new-box", V1, ago(time.Minute), SysA)

	c.Publish("old-box", V1, ago(90*24*time.Hour), SysA)
	c.Report("old-box", Applied(V1, SysA, ago(80*24*time.Hour)))

	c.Publish("broken-report", V1, ago(time.Hour), SysA)
	c.Raw("broken-report", manifest.StatusFile, []byte(`{"format":1,"host":"broken-report","finishedAt":true}`))

	f := &fleet.Fleet{Ref: "/fleet", Hosts: []fleet.Host{
		Managed("web-1", ""), Managed("web-2", ""), Managed("db", ""), Managed("cupboard-pi", ""),
		Managed("kiosk", ""), Managed("gpu", ""), Managed("edge", ""), Managed("new-box", ""),
		Managed("broken-report", ""), Managed("staging", ""),
		{Name: "laptop", Managed: true}, {Name: "printer"},
	}}
	return c.Root, f
}
