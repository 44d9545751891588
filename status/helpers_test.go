package status

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/manifest"
)

// now is the fixed clock of every test.
var now = time.Date(2025, 3, 14, 12, 0, 0, 0, time.UTC)

const (
	sysA = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a-1"
	sysB = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b-2"
	v1   = "1111111111111111aaaa"
	v2   = "2222222222222222bbbb"
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

func (c chroot) raw(host, rel string, data []byte) {
	c.t.Helper()
	p := filepath.Join(c.root, host, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		c.t.Fatal(err)
	}
}

func (c chroot) json(host, rel string, v any) {
	c.t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.raw(host, rel, data)
}

// publish writes a manifest as the publisher does, with a file list.
func (c chroot) publish(host, version string, at time.Time, expected string) {
	c.t.Helper()
	c.json(host, manifest.ManifestFile, manifest.Manifest{
		Format: manifest.Format, Host: host, Version: version, PublishedAt: at,
		ExpectedToplevel: expected, Flake: manifest.Flake{Attr: fleet.ConfigAttr(host)},
		Files: []manifest.File{{Path: "flake.nix", Mode: 0o644, Size: 10, SHA256: "0000000000000000000000000000000000000000000000000000000000000000"}},
	})
	if err := os.MkdirAll(filepath.Join(c.root, host, manifest.ReportsDir), 0o755); err != nil {
		c.t.Fatal(err)
	}
}

func (c chroot) report(host string, r manifest.Report) {
	c.t.Helper()
	if r.Format == 0 {
		r.Format = manifest.Format
	}
	if r.Host == "" {
		r.Host = host
	}
	c.json(host, manifest.StatusFile, r)
}

// applied is the report of a host that applied version v and runs sys.
func applied(v, sys string, finished time.Time) manifest.Report {
	return manifest.Report{
		SeenVersion: v, AppliedVersion: v, AttemptedVersion: v,
		Stage: manifest.StageConfirmed, Result: manifest.ResultSuccess,
		ExpectedToplevel: sys, ActualToplevel: sys, CurrentSystem: sys, BootedSystem: sys,
		Operation: "switch", StartedAt: finished.Add(-time.Minute), FinishedAt: finished,
	}
}

func managed(name string, interval string) fleet.Host {
	return fleet.Host{Name: name, Managed: true, Enable: true, Attr: fleet.ConfigAttr(name), Options: fleet.Options{Interval: interval}}
}

func rowsByHost(s *Snapshot) map[string]Row {
	m := map[string]Row{}
	for _, r := range s.Hosts {
		m[r.Host] = r
	}
	return m
}
