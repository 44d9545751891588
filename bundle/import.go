package bundle

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"strings"

	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/status"
)

// maxImportedLog bounds a log read from a bundle (the agent caps its
// logs far below).
const maxImportedLog = 64 << 20

// Imported is what ImportReport did with a bundle's report.
type Imported struct {
	Host   string           // the bundle's host
	Report *manifest.Report // the report the host wrote into the bundle
	// Newer is the chroot's report when it is newer than the bundle's,
	// which was then skipped; nil when the bundle's was imported.
	Newer *manifest.Report
}

// ImportOptions says how ImportReport checks a bundle.
type ImportOptions struct {
	// Keys are the server's publication keys. A bundle's manifest is
	// accepted when it is its host's live manifest, byte for byte, or,
	// with Keys, when one of them signed it (the host was deployed again
	// since the export).
	Keys []manifest.PublicationKey
}

// ImportReport copies a bundle's report (and its log) into its host's
// chroot below root. Everything in the bundle came back from the host: it
// is read below the bundle with os.Root and checked like a report over
// SFTP. Over SFTP a host can only write its own chroot; here the bundle's
// manifest names the chroot, so it must be one the server published for
// that host, or any host could report for another.
func ImportReport(root, dir string, opts ImportOptions) (Imported, error) {
	b, err := os.OpenRoot(dir)
	if err != nil {
		return Imported{}, err
	}
	defer b.Close()
	host, published, rep, err := readBundleReport(b)
	if err != nil {
		return Imported{}, err
	}
	chroot, err := status.OpenChroot(root, host)
	if err != nil {
		return Imported{}, err
	}
	defer chroot.Close()
	if err := checkPublished(chroot, host, published, opts.Keys); err != nil {
		return Imported{}, err
	}
	done := Imported{Host: host, Report: rep}
	if cur, err := status.ReadReport(chroot, host); err == nil && cur.FinishedAt.After(rep.FinishedAt) {
		done.Newer = cur
		return done, nil
	}
	if err := importLog(b, chroot, host, rep.Log); err != nil {
		return Imported{}, err
	}
	if err := writeImportedReport(chroot, rep); err != nil {
		return Imported{}, err
	}
	return done, nil
}

// readBundleReport reads the bundle's host and manifest, and the report
// that host wrote into it.
func readBundleReport(b *os.Root) (string, []byte, *manifest.Report, error) {
	data, err := readRootFile(b, manifest.ManifestFile, manifest.MaxSize)
	if err != nil {
		return "", nil, nil, fmt.Errorf("not a bundle: %w", err)
	}
	m, err := manifest.Parse(data)
	if err != nil {
		return "", nil, nil, err
	}
	rep, err := status.ReadReport(b, m.Host)
	if err != nil {
		return "", nil, nil, fmt.Errorf("host %s: %w", m.Host, err)
	}
	return m.Host, data, rep, nil
}

// checkPublished refuses a bundle manifest the server did not publish for
// host: neither the chroot's live manifest nor signed by one of keys.
func checkPublished(chroot *os.Root, host string, data []byte, keys []manifest.PublicationKey) error {
	if live, err := readRootFile(chroot, manifest.ManifestFile, manifest.MaxSize); err == nil && bytes.Equal(live, data) {
		return nil
	}
	if len(keys) == 0 {
		return fmt.Errorf("host %s: the bundle's manifest is not the one the server publishes for this host (a host reports only for itself); if the host was deployed again since the export, pass --publication-key so that its signature is checked instead", host)
	}
	if _, err := manifest.ParseVerified(data, keys); err != nil {
		return fmt.Errorf("host %s: the bundle's manifest is not one the server published: %w", host, err)
	}
	return nil
}

// importLog copies the log the report names (if any) from the bundle
// into the chroot's logs.
func importLog(b, chroot *os.Root, host, name string) error {
	if name == "" {
		return nil
	}
	if unsafeLogName(name) {
		return fmt.Errorf("host %s: the report names an unsafe log %q", host, name)
	}
	log, err := readRootFile(b, manifest.LogsDir+"/"+name, maxImportedLog)
	if err != nil {
		return fmt.Errorf("host %s: log: %w", host, err)
	}
	if err := chroot.MkdirAll(manifest.LogsDir, 0o755); err != nil {
		return err
	}
	return writeRootFile(chroot, manifest.LogsDir+"/"+name, log)
}

// unsafeLogName reports whether a log name from a report could reach
// outside the logs directory (or hide in it).
func unsafeLogName(name string) bool {
	return strings.ContainsAny(name, "/\\\x00") || strings.HasPrefix(name, ".") || len(name) > 255 || path.Base(name) != name
}

// writeImportedReport writes rep as the chroot's status file.
func writeImportedReport(chroot *os.Root, rep *manifest.Report) error {
	body, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := writeRootFile(chroot, manifest.StatusFile, append(body, '\n')); err != nil {
		return err
	}
	// status takes an unchanged report's time from its mtime: the time
	// the host wrote it, not the import's.
	if !rep.FinishedAt.IsZero() {
		chroot.Chtimes(manifest.StatusFile, rep.FinishedAt, rep.FinishedAt)
	}
	return nil
}

// writeRootFile replaces name below r atomically (temp, fsync, rename).
// The temporary name is fixed: one a killed import left is removed first.
func writeRootFile(r *os.Root, name string, data []byte) error {
	tmp := path.Join(path.Dir(name), "."+path.Base(name)+".import-tmp")
	r.Remove(tmp)
	return atomicfile.ReplaceIn(r, name, tmp, data, 0o644)
}
