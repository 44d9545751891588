package benchtb

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/bento-nix/bento/manifest"
)

// The systems the generated hosts run: SystemB is the drifting hosts'.
const (
	SystemA = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a-1"
	SystemB = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b-2"
)

// oldVersion is the version failing and pending hosts ran before: a valid
// version, and none of the generated ones.
const oldVersion = "deadbeef00000000"

// ChrootFleet writes n chroots below root as a server's chroot root holds
// them after the hosts reported: a manifest listing files entries, and a
// report in a mix of states, most up to date as in a healthy fleet, and one
// in 20 each pending, failing, drifting, stale and never seen. With logs,
// each report's log is there too (gzipped, as agents upload them). It
// returns the bytes of manifests and reports written.
func ChrootFleet(root string, n, files int, now time.Time, logs bool) (int64, error) {
	list := make([]manifest.File, files)
	for i := range list {
		list[i] = manifest.File{Path: fmt.Sprintf("hosts/common/module-%04d.nix", i), Mode: 0o644, Size: 1234, SHA256: fmt.Sprintf("%064x", i)}
	}
	var log []byte
	if logs {
		var buf bytes.Buffer
		w := gzip.NewWriter(&buf)
		w.Write(bytes.Repeat([]byte("bento: building something, line of a log\n"), 200))
		w.Close()
		log = buf.Bytes()
	}
	var total int64
	for i := range n {
		written, err := writeChroot(root, i, list, now, log)
		if err != nil {
			return 0, err
		}
		total += written
	}
	return total, nil
}

// hostDocs is host i's manifest and report, in the state i%20 picks.
func hostDocs(i int, files []manifest.File, now time.Time) (manifest.Manifest, manifest.Report) {
	host := fmt.Sprintf("host-%04d", i)
	version := fmt.Sprintf("%0*x", manifest.VersionLen, i+1)
	m := manifest.Manifest{Format: manifest.Format, Host: host, Version: version, PublishedAt: now.Add(-time.Hour),
		ExpectedToplevel: SystemA, Flake: manifest.Flake{Attr: "nixosConfigurations." + host}, Files: files}
	r := manifest.Report{Format: manifest.Format, Host: host, SeenVersion: version, AppliedVersion: version, AttemptedVersion: version,
		Stage: manifest.StageConfirmed, Result: manifest.ResultSuccess, ExpectedToplevel: SystemA, ActualToplevel: SystemA,
		CurrentSystem: SystemA, BootedSystem: SystemA, Operation: "switch", AgentVersion: "dev", BytesFetched: 3500,
		StartedAt: now.Add(-2 * time.Minute), FinishedAt: now.Add(-time.Minute), Log: version + "-20250101T000000Z.log.gz"}
	switch i % 20 {
	case 1:
		r.AppliedVersion = oldVersion
	case 2:
		r.Result, r.Stage, r.AppliedVersion, r.Error = manifest.ResultFailure, manifest.StageFailed, oldVersion, "build: error: builder for '/nix/store/x.drv' failed with exit code 1"
	case 3:
		r.CurrentSystem = SystemB
	case 4:
		r.FinishedAt = now.Add(-3 * time.Hour)
	}
	return m, r
}

// writeChroot writes host i's chroot: its manifest and, unless it was
// never seen, its report and (when log is not nil) the report's log.
func writeChroot(root string, i int, files []manifest.File, now time.Time, log []byte) (int64, error) {
	m, r := hostDocs(i, files, now)
	dir := filepath.Join(root, m.Host)
	if err := os.MkdirAll(filepath.Join(dir, manifest.LogsDir), 0o755); err != nil {
		return 0, err
	}
	md, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, manifest.ManifestFile), md, 0o644); err != nil {
		return 0, err
	}
	if i%20 == 5 {
		return int64(len(md)), nil // never seen
	}
	rd, _ := json.Marshal(r)
	if err := os.WriteFile(filepath.Join(dir, manifest.StatusFile), rd, 0o644); err != nil {
		return 0, err
	}
	if log != nil {
		if err := os.WriteFile(filepath.Join(dir, manifest.LogsDir, r.Log), log, 0o644); err != nil {
			return 0, err
		}
	}
	return int64(len(md) + len(rd)), nil
}
