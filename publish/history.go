package publish

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/internal/statefile"
	"github.com/bento-nix/bento/manifest"
)

// StateDir is the server-side directory beside the chroots that remembers,
// per host, which manifests were live when: what retention needs. It lies
// outside every chroot (a host sees only <root>/<host>), root-only (0700).
// Its leading dot keeps it from ever being taken for a host.
const StateDir = ".bento-state"

// ReservedNames are the entries of StateDir that are not a host's: the
// deploy's unfinished marker, the rollout record (package rollout) and the
// history database with SQLite's side files (package history). A host so
// named would share its state directory with them, so it is refused.
var ReservedNames = []string{"unfinished", "rollout", "history.db", "history.db-wal", "history.db-shm", "history.db-journal"}

// CheckHostName refuses a host name that StateDir uses for itself.
func CheckHostName(name string) error {
	if slices.Contains(ReservedNames, name) {
		return fmt.Errorf("host name %q is reserved: bento keeps its own %s in %s/; rename the nixosConfigurations entry", name, name, StateDir)
	}
	return nil
}

// historyFile is the per-host record under <root>/.bento-state/<host>/.
const historyFile = "history.json"

// maxHistoryBytes bounds what is read back (the server wrote it, but a
// full disk or an editor may have left anything there).
const maxHistoryBytes = 16 << 20

// DefaultRetention is how long an object stays in a chroot after the last
// manifest naming it stopped being live.
const DefaultRetention = time.Hour

// history is what a host's chroot served recently: one entry per
// (version, format, with objects) that was live at some moment of the
// retention window, the live one included.
type history struct {
	Host    string      `json:"host"`
	Entries []histEntry `json:"entries"`
	// Live is the head of the manifest this record saw go live, and the
	// identity of its file: while manifest.json is that file, a deploy
	// need not read it.
	Live *liveHead `json:"live,omitempty"`
}

type liveHead struct {
	ID      string            `json:"id"`
	Objects bool              `json:"objects"`
	Head    manifest.Manifest `json:"head"`
}

// fileID identifies a file's inode and content: device, inode, size,
// modification and change times. A manifest is never written in place,
// so another manifest is another inode.
func fileID(fi fs.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	return fmt.Sprintf("%d:%d:%d:%d.%d:%d.%d", st.Dev, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec)
}

// liveHead returns the live manifest's head as the record knows it, when
// manifest.json is still the file the record saw go live.
func (p *Publisher) liveHead(host, hostDir string) (*manifest.Manifest, bool, bool) {
	live := p.recordedLive(host)
	if live == nil {
		return nil, false, false
	}
	fi, err := os.Lstat(filepath.Join(hostDir, manifest.ManifestFile))
	if err != nil || !fi.Mode().IsRegular() || fileID(fi) != live.ID {
		return nil, false, false
	}
	m := live.Head
	if m.Host != host || m.Validate() != nil {
		return nil, false, false
	}
	return &m, live.Objects, true
}

// recordedLive is the live head the host's record remembers; nil when the
// record is unreadable, names another host or remembers none.
func (p *Publisher) recordedLive(host string) *liveHead {
	data, err := readCapped(filepath.Join(p.stateDir(host), historyFile), maxHistoryBytes)
	if err != nil {
		return nil
	}
	var h history
	if json.Unmarshal(data, &h) != nil || h.Host != host || h.Live == nil || h.Live.ID == "" {
		return nil
	}
	return h.Live
}

type histEntry struct {
	Version string `json:"version,omitempty"`
	// Format is the manifest's format: 1 protects config/, 2 the objects
	// its copy <version>.json names (when Objects).
	Format  int  `json:"format,omitempty"`
	Objects bool `json:"objects,omitempty"`
	// Recovered: the record was missing or unreadable; until Until plus
	// the retention, nothing is removed from the chroot, since no one
	// knows what a host may still be reading.
	Recovered bool `json:"recovered,omitempty"`
	// Until is when the entry stopped being live; zero: it is live.
	Until time.Time `json:"until,omitzero"`
}

func (e histEntry) live() bool { return e.Until.IsZero() }

// inWindow tells whether a reader may still hold the entry's manifest.
func (e histEntry) inWindow(now time.Time, retention time.Duration) bool {
	return e.live() || now.Sub(e.Until) < retention
}

func (e histEntry) same(m *manifest.Manifest) bool { return e.matches(m, hasObjects(m)) }

// matches is same for a manifest whose files may not have been decoded.
func (e histEntry) matches(m *manifest.Manifest, objects bool) bool {
	return !e.Recovered && e.Version == m.Version && e.Format == m.Format && e.Objects == objects
}

func hasObjects(m *manifest.Manifest) bool { return m.Format >= 2 && len(m.Files) > 0 }

// copyName is the name of the manifest copy in the host's state directory.
func (e histEntry) copyName() string { return e.Version + ".json" }

func (p *Publisher) stateDir(host string) string {
	return filepath.Join(p.root, StateDir, host)
}

// loadHistory reads a host's record and reconciles it with the manifest
// the chroot serves (cur; nil when none): a deploy killed between the
// manifest's rename and the record's update left the record behind, and
// the record may be lost altogether. Both are repaired conservatively:
// the entries it does not know end now (later than they really did), and
// a lost record keeps everything in the chroot for a whole window.
func (p *Publisher) loadHistory(host, hostDir string, cur *manifest.Manifest, curObjects bool, now time.Time) (h *history, notes []string, changed bool) {
	path := filepath.Join(p.stateDir(host), historyFile)
	h, err := readHistory(host, path)
	if err != nil {
		aside := fmt.Sprintf("%s.corrupt-%d", path, now.UnixNano())
		os.Rename(path, aside)
		notes = append(notes, fmt.Sprintf("the retention record %s was unreadable (%v): moved to %s; nothing is removed from the chroot for one retention period", path, err, aside))
		h = &history{Host: host}
	}
	if len(h.Entries) == 0 && chrootInUse(hostDir, cur) {
		// A chroot without a record: published by format 1, or its record
		// was lost. Whatever it holds may be in use.
		h.Entries = append(h.Entries, histEntry{Recovered: true, Until: now})
		changed = true
	}
	if cur == nil {
		return h, notes, changed
	}
	found, ended := h.markLive(cur, curObjects, now)
	changed = changed || ended
	if !found {
		notes = append(notes, p.addLive(h, hostDir, cur, curObjects, now)...)
		changed = true
	}
	return h, notes, changed
}

// readHistory reads and checks a host's record at path; a missing record
// is an empty one.
func readHistory(host, path string) (*history, error) {
	h := &history{Host: host}
	data, err := readCapped(path, maxHistoryBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return h, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, h); err != nil {
		return nil, err
	}
	if h.Host != host {
		return nil, fmt.Errorf("it names host %q", h.Host)
	}
	for _, e := range h.Entries {
		if !e.Recovered && !manifest.IsVersion(e.Version) {
			return nil, fmt.Errorf("invalid version %q", clip(e.Version))
		}
	}
	return h, nil
}

// chrootInUse tells whether the chroot serves or holds anything a reader
// may be using: a manifest, objects/ or config/.
func chrootInUse(hostDir string, cur *manifest.Manifest) bool {
	return cur != nil || exists(filepath.Join(hostDir, manifest.ObjectsDir)) || exists(filepath.Join(hostDir, manifest.ConfigDir))
}

// markLive makes the entries matching cur live again and ends the other
// live ones now. It tells whether any entry matched and whether any
// changed.
func (h *history) markLive(cur *manifest.Manifest, curObjects bool, now time.Time) (found, changed bool) {
	for i := range h.Entries {
		e := &h.Entries[i]
		if e.matches(cur, curObjects) {
			found = true
			if !e.live() {
				e.Until = time.Time{}
				changed = true
			}
		} else if e.live() {
			e.Until = now
			changed = true
		}
	}
	return found, changed
}

// addLive adds the live entry for cur, which the record did not know,
// keeping a copy of its manifest when it names objects.
func (p *Publisher) addLive(h *history, hostDir string, cur *manifest.Manifest, curObjects bool, now time.Time) (notes []string) {
	e := histEntry{Version: cur.Version, Format: cur.Format, Objects: curObjects}
	if e.Objects {
		if err := p.saveCopy(h.Host, e, filepath.Join(hostDir, manifest.ManifestFile)); err != nil {
			// Without its copy the entry protects nothing: keep all.
			notes = append(notes, fmt.Sprintf("keeping a copy of the live manifest: %v; nothing is removed from the chroot for one retention period", err))
			h.Entries = append(h.Entries, histEntry{Recovered: true, Until: now})
		}
	}
	h.Entries = append(h.Entries, e)
	return notes
}

// saveCopy keeps the manifest at src as the copy of e: a hard link (the
// manifest is never rewritten in place, so the link keeps the old
// content), or a copy on another file system.
func (p *Publisher) saveCopy(host string, e histEntry, src string) error {
	dir := p.stateDir(host)
	if err := p.ensurePrivateDir(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := p.ensurePrivateDir(dir); err != nil {
		return err
	}
	dst := filepath.Join(dir, e.copyName())
	tmp := filepath.Join(dir, atomicfile.TempPrefix+e.copyName())
	os.Remove(tmp)
	if err := os.Link(src, tmp); err != nil {
		data, rerr := readCapped(src, manifest.MaxSize)
		if rerr != nil {
			return rerr
		}
		if err := atomicfile.WriteFile(dst, data, 0o600); err != nil {
			return err
		}
		return nil
	}
	return os.Rename(tmp, dst)
}

// record makes m the live entry: the others end now.
func (h *history) record(m *manifest.Manifest, now time.Time) {
	found := false
	for i := range h.Entries {
		e := &h.Entries[i]
		if e.same(m) {
			e.Until, found = time.Time{}, true
		} else if e.live() {
			e.Until = now
		}
	}
	if !found {
		h.Entries = append(h.Entries, histEntry{Version: m.Version, Format: m.Format, Objects: hasObjects(m)})
	}
}

// expire drops the entries outside the window and says whether any went.
func (h *history) expire(now time.Time, retention time.Duration) bool {
	kept := h.Entries[:0]
	for _, e := range h.Entries {
		if e.inWindow(now, retention) {
			kept = append(kept, e)
		}
	}
	gone := len(kept) != len(h.Entries)
	h.Entries = kept
	return gone
}

func (h *history) expiring(now time.Time, retention time.Duration) bool {
	for _, e := range h.Entries {
		if !e.inWindow(now, retention) {
			return true
		}
	}
	return false
}

func (h *history) recovering(now time.Time, retention time.Duration) bool {
	for _, e := range h.Entries {
		if e.Recovered && e.inWindow(now, retention) {
			return true
		}
	}
	return false
}

func (p *Publisher) saveHistory(h *history) error {
	dir := p.stateDir(h.Host)
	if err := p.ensurePrivateDir(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := p.ensurePrivateDir(dir); err != nil {
		return err
	}
	data, err := json.Marshal(h)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, historyFile), append(data, '\n'), 0o600)
}

// ensurePrivateDir makes d a directory only root (the deploying user)
// can enter.
func (p *Publisher) ensurePrivateDir(d string) error {
	fi, err := lstatOrMkdir(d, 0o700)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory (%s); remove it", d, fi.Mode().Type())
	}
	if fi.Mode().Perm() != 0o700 {
		return os.Chmod(d, 0o700)
	}
	return nil
}

func readCapped(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return statefile.ReadRegular(f, path, max)
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
