package builder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bento-nix/bento/internal/atomicfile"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/flock"
)

// Layout of the state directory.
const (
	// GCRootsDir holds <host>/<run>, links to the host's last two distinct
	// toplevels (the current build and the one before), registered as Nix
	// GC roots; <run> is also the name of that build's log.
	GCRootsDir = "gcroots"
	// LogsDir holds <host>/<timestamp>.log, one per host and run.
	LogsDir = "logs"
	// BuildsDir holds <host>.json, the Record of the last successful build.
	BuildsDir = "builds"
	// KeepLogs is how many logs are kept per host; older ones are removed.
	KeepLogs = 30
)

// Record is a host's last successful build, as bento status and bento
// diff read it.
type Record struct {
	Host    string    `json:"host"`
	OutPath string    `json:"outPath"`
	DrvPath string    `json:"drvPath"`
	BuiltAt time.Time `json:"builtAt"`
	// Previous is the toplevel built before OutPath (its GC root is kept
	// too), empty when there was none.
	Previous string `json:"previous,omitempty"`
}

// LastBuilds returns the record of every host built with stateDir
// (DefaultStateDir when empty). A state directory that was never used
// gives an empty map.
func LastBuilds(stateDir string) (map[string]Record, error) {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	dir := filepath.Join(stateDir, BuildsDir)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]Record{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("build records: %w", err)
	}
	out := make(map[string]Record, len(entries))
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(name, ".") || e.IsDir() {
			continue
		}
		rec, err := readRecord(filepath.Join(dir, e.Name()), name)
		if err != nil {
			return nil, err
		}
		out[name] = rec
	}
	return out, nil
}

// readRecord reads the record at p, which must be host's.
func readRecord(p, host string) (Record, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return Record{}, fmt.Errorf("build record: %w", err)
	}
	var rec Record
	if err := json.Unmarshal(data, &rec); err != nil {
		return Record{}, fmt.Errorf("build record %s: %w (remove the file; the next bento build writes it again)", p, err)
	}
	if rec.Host != host {
		return Record{}, fmt.Errorf("build record %s: it is for host %q (remove the file; the next bento build writes it again)", p, rec.Host)
	}
	return rec, nil
}

type stateDir struct {
	root string
}

// openState creates the state directory's layout and checks that files
// can be created there, before any build starts.
func openState(root string) (*stateDir, error) {
	for _, d := range []string{GCRootsDir, LogsDir, BuildsDir} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, &StateDirError{Dir: root, Problem: "is not usable", Err: err}
		}
	}
	probe, err := os.CreateTemp(filepath.Join(root, BuildsDir), ".probe-*")
	if err != nil {
		return nil, &StateDirError{Dir: root, Problem: "is not writable", Err: err}
	}
	probe.Close()
	os.Remove(probe.Name())
	return &stateDir{root: root}, nil
}

func (s *stateDir) hostDir(kind, host string) (string, error) {
	// Names were validated by Build; check again since they become paths.
	if err := fleet.ValidateName(host); err != nil {
		return "", err
	}
	d := filepath.Join(s.root, kind, host)
	return d, os.MkdirAll(d, 0o755)
}

func logStamp(t time.Time) string { return t.UTC().Format("20060102T150405.000Z") }

// newLog creates this run's log file for host and removes the oldest logs
// beyond KeepLogs.
func (s *stateDir) newLog(host, stamp string) (*os.File, error) {
	dir, err := s.hostDir(LogsDir, host)
	if err != nil {
		return nil, fmt.Errorf("log: %w", err)
	}
	var f *os.File
	for i := 1; ; i++ {
		name := stamp + ".log"
		if i > 1 {
			// Another run started in the same millisecond.
			name = stamp + "-" + strconv.Itoa(i) + ".log"
		}
		f, err = os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err == nil || !errors.Is(err, fs.ErrExist) || i > 100 {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("log: %w", err)
	}
	pruneLogs(dir, KeepLogs)
	return f, nil
}

func pruneLogs(dir string, keep int) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	var logs []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".log") && e.Type().IsRegular() {
			logs = append(logs, e.Name())
		}
	}
	if len(logs) <= keep {
		return
	}
	// Stamps sort chronologically.
	sort.Strings(logs)
	for _, n := range logs[:len(logs)-keep] {
		os.Remove(filepath.Join(dir, n))
	}
}

// outLink is where nix build links the host's new toplevel: in the host's
// GC roots directory, named after this run's log file (unique per host and
// run), so that the root and the log of one build share a name.
func (s *stateDir) outLink(host, logFile string) (string, error) {
	dir, err := s.hostDir(GCRootsDir, host)
	if err != nil {
		return "", fmt.Errorf("gc roots: %w", err)
	}
	return filepath.Join(dir, strings.TrimSuffix(filepath.Base(logFile), ".log")), nil
}

// keep records a successful build whose out link nix build has just made
// (and registered with the garbage collector itself, so the build was
// never collectable). It then removes the host's older links but one: the
// newest that points at a different system, the previous build. Pruning
// is only os.Remove (Nix drops the stale registration at its next GC), so
// keeping costs no extra Nix process per host.
//
// The lock on the host's GC roots serialises concurrent bento processes;
// rotating takes milliseconds, so a holder that keeps it for
// keepLockTimeout is stuck, and waiting longer would only hang this one.
func (s *stateDir) keep(ctx context.Context, rec Record, link string) error {
	dir := filepath.Dir(link)
	lk, err := flock.Acquire(ctx, filepath.Join(dir, ".lock"), flock.Options{Timeout: keepLockTimeout})
	if err != nil {
		return fmt.Errorf("gc roots: %w", err)
	}
	defer lk.Release()
	if target, err := os.Readlink(link); err != nil || target != rec.OutPath {
		return fmt.Errorf("gc root %s: nix build did not link it to %s (%v)", link, rec.OutPath, err)
	}
	names, err := otherLinks(dir, filepath.Base(link))
	if err != nil {
		return fmt.Errorf("gc roots: %w", err)
	}
	previous, err := pruneLinks(dir, names, rec.OutPath)
	if err != nil {
		return err
	}
	rec.Previous = previous
	return s.writeRecord(rec)
}

// otherLinks lists the GC root links in dir but self, newest first.
func otherLinks(dir, self string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.Type()&fs.ModeSymlink != 0 && !strings.HasPrefix(e.Name(), ".") && e.Name() != self {
			names = append(names, e.Name())
		}
	}
	// Names are run stamps: newest first.
	sort.Sort(sort.Reverse(sort.StringSlice(names)))
	return names, nil
}

// pruneLinks removes the links names in dir (newest first) but the first
// that points at an existing system other than out, and returns that
// system ("" when none does): the previous build.
func pruneLinks(dir string, names []string, out string) (string, error) {
	previous := ""
	for _, n := range names {
		p := filepath.Join(dir, n)
		target, _ := os.Readlink(p)
		if previous == "" && target != "" && target != out && exists(target) {
			previous = target
			continue
		}
		if err := os.Remove(p); err != nil {
			return "", fmt.Errorf("gc roots: %w", err)
		}
	}
	return previous, nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// keepLockTimeout bounds the wait for another process rotating the same
// host's GC roots.
const keepLockTimeout = time.Minute

// writeRecord replaces the host's record atomically: temp file, fsync,
// rename, fsync of the directory.
func (s *stateDir) writeRecord(rec Record) error {
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Join(s.root, BuildsDir)
	if err := atomicfile.WriteFile(filepath.Join(dir, rec.Host+".json"), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("build record: %w", err)
	}
	return nil
}

// record reads host's last successful build; false when there is none or
// it cannot be read (the host is then simply built).
func (s *stateDir) record(host string) (Record, bool) {
	data, err := os.ReadFile(filepath.Join(s.root, BuildsDir, host+".json"))
	if err != nil {
		return Record{}, false
	}
	var rec Record
	if json.Unmarshal(data, &rec) != nil || rec.Host != host {
		return Record{}, false
	}
	return rec, true
}

// rootOf returns one of host's GC roots that links to out.
func (s *stateDir) rootOf(host, out string) (string, bool) {
	dir := filepath.Join(s.root, GCRootsDir, host)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", false
	}
	for _, e := range entries {
		if e.Type()&fs.ModeSymlink == 0 || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if target, err := os.Readlink(p); err == nil && target == out {
			return p, true
		}
	}
	return "", false
}
