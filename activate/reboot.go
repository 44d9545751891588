package activate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/internal/statefile"
)

// RebootCheck is the answer of NeedsReboot.
type RebootCheck struct {
	Required bool
	// Changed names the parts that differ: "kernel", "initrd",
	// "kernel-modules", "kernel-params".
	Changed []string
	// Note explains an answer that is not a plain comparison, e.g. no
	// booted system to compare with.
	Note string
}

// NeedsReboot compares the boot parts of the booted system with next.
// booted "" or missing means the booted system is unknown (a fresh
// installation, a container): no reboot, and Note says why.
func NeedsReboot(booted, next string) (RebootCheck, error) {
	if rc, done, err := checkSystems(booted, next); done || err != nil {
		return rc, err
	}
	changed, err := changedParts(booted, next)
	if err != nil {
		return RebootCheck{}, fmt.Errorf("reboot check: %w", err)
	}
	return RebootCheck{Required: len(changed) > 0, Changed: changed}, nil
}

// checkSystems checks that next exists and whether booted is known:
// when it is not, done is true and rc is the answer.
func checkSystems(booted, next string) (rc RebootCheck, done bool, err error) {
	if next == "" {
		return RebootCheck{}, false, errors.New("reboot check: no new system given")
	}
	if _, err := os.Stat(next); err != nil {
		return RebootCheck{}, false, fmt.Errorf("reboot check: new system: %w", err)
	}
	if booted == "" {
		return RebootCheck{Note: "no booted system is known (fresh installation?): reboot not required"}, true, nil
	}
	if _, err := os.Stat(booted); errors.Is(err, fs.ErrNotExist) {
		return RebootCheck{Note: fmt.Sprintf("booted system %s does not exist: reboot not required", booted)}, true, nil
	} else if err != nil {
		return RebootCheck{}, false, fmt.Errorf("reboot check: booted system: %w", err)
	}
	return RebootCheck{}, false, nil
}

// bootPart is a part only a reboot brings into effect, with how it is
// identified.
type bootPart struct {
	name string
	id   func(string) (string, error)
}

// bootParts are the parts only a reboot brings into effect. Like
// nixpkgs' system.autoUpgrade, links are compared by target: two systems
// share a kernel exactly when they link the same store path.
func bootParts() []bootPart {
	return []bootPart{
		{"kernel", partID},
		{"initrd", partID},
		{"kernel-modules", partID},
		// kernel-params is a small file (missing in old systems: same as empty).
		{"kernel-params", readParams},
	}
}

// changedParts lists the boot parts that differ between booted and next.
func changedParts(booted, next string) ([]string, error) {
	var changed []string
	for _, part := range bootParts() {
		a, err := part.id(filepath.Join(booted, part.name))
		if err != nil {
			return nil, err
		}
		b, err := part.id(filepath.Join(next, part.name))
		if err != nil {
			return nil, err
		}
		if a != b {
			changed = append(changed, part.name)
		}
	}
	return changed, nil
}

// partID identifies a boot part: its link target when it is a link (the
// NixOS case), otherwise its content. "" means absent.
func partID(p string) (string, error) {
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		t, err := os.Readlink(p)
		if err != nil {
			return "", err
		}
		return "link:" + t, nil
	}
	if fi.Mode().IsRegular() {
		data, err := os.ReadFile(p)
		if err != nil {
			return "", err
		}
		return "file:" + string(data), nil
	}
	// A directory copied into the system: its identity is where it is.
	return "dir:" + p, nil
}

func readParams(p string) (string, error) {
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return strings.Join(strings.Fields(string(data)), " "), nil
}

// Reboot policies.
const (
	PolicyNever  = "never"
	PolicyNow    = "now"
	PolicyWindow = "window"
)

// Policy says when a needed reboot happens.
type Policy struct {
	// Mode is never (only report reboot-required), now, or window.
	Mode string
	// Window is a daily time of day range "HH:MM-HH:MM" in local time; it
	// may wrap midnight ("23:00-02:00").
	Window string

	start, end int // minutes after midnight; end > start, end may pass 24:00
}

// ParsePolicy checks a policy. An empty mode means never. A window is
// required by mode window and checked whenever it is given.
func ParsePolicy(mode, window string) (Policy, error) {
	if mode == "" {
		mode = PolicyNever
	}
	p := Policy{Mode: mode, Window: window}
	switch mode {
	case PolicyNever, PolicyNow, PolicyWindow:
	default:
		return Policy{}, fmt.Errorf("reboot policy %q is not supported: use never, now or window", mode)
	}
	if window == "" {
		if mode == PolicyWindow {
			return Policy{}, errors.New(`reboot policy window needs a window: set it as "HH:MM-HH:MM", e.g. "01:00-05:00"`)
		}
		return p, nil
	}
	from, to, ok := strings.Cut(window, "-")
	if !ok {
		return Policy{}, fmt.Errorf(`reboot window %q: write it as "HH:MM-HH:MM", e.g. "01:00-05:00"`, window)
	}
	s, err := parseClock(from, false)
	if err != nil {
		return Policy{}, fmt.Errorf("reboot window %q: start: %w", window, err)
	}
	e, err := parseClock(to, true)
	if err != nil {
		return Policy{}, fmt.Errorf("reboot window %q: end: %w", window, err)
	}
	if s == e%(24*60) {
		return Policy{}, fmt.Errorf("reboot window %q is empty: start and end must differ", window)
	}
	if e <= s {
		e += 24 * 60
	}
	p.start, p.end = s, e
	return p, nil
}

// parseClock reads "HH:MM" as minutes after midnight; "24:00" only as an end.
func parseClock(s string, end bool) (int, error) {
	s = strings.TrimSpace(s)
	h, m, ok := splitClock(s)
	if !ok || !validClock(h, m, end) {
		return 0, fmt.Errorf("%q is not a time of day: use HH:MM between 00:00 and 23:59", s)
	}
	return h*60 + m, nil
}

// splitClock reads the hours (one or two digits) and minutes (two) of
// "HH:MM", not yet checked against a day.
func splitClock(s string) (h, m int, ok bool) {
	hh, mm, ok := strings.Cut(s, ":")
	h, err1 := strconv.Atoi(hh)
	m, err2 := strconv.Atoi(mm)
	return h, m, ok && err1 == nil && err2 == nil && len(hh) != 0 && len(hh) <= 2 && len(mm) == 2
}

// validClock reports whether h:m is a time of day; 24:00 only as an end.
func validClock(h, m int, end bool) bool {
	if h < 0 || m < 0 || m > 59 || h > 24 {
		return false
	}
	return h != 24 || (m == 0 && end)
}

// Plan decides, at now, when a needed reboot happens: never → zero time
// and false; now → now; window → a random moment inside the window that is
// open now (between now and its end) or else the next one, so that a
// fleet does not reboot all at once. rnd nil uses a random seed.
func (p Policy) Plan(now time.Time, rnd *rand.Rand) (time.Time, bool) {
	switch p.Mode {
	case PolicyNow:
		return now, true
	case PolicyWindow:
	default:
		return time.Time{}, false
	}
	if p.end <= p.start {
		// A Policy not made by ParsePolicy.
		q, err := ParsePolicy(p.Mode, p.Window)
		if err != nil {
			return time.Time{}, false
		}
		p = q
	}
	y, mo, d := now.Date()
	loc := now.Location()
	// Yesterday's window may still be open when it wraps midnight.
	for off := -1; off <= 1; off++ {
		s := time.Date(y, mo, d+off, p.start/60, p.start%60, 0, 0, loc)
		e := time.Date(y, mo, d+off, p.end/60, p.end%60, 0, 0, loc)
		if !e.After(now) {
			continue
		}
		if s.Before(now) {
			s = now
		}
		span := e.Sub(s)
		if span <= 0 {
			continue
		}
		var n int64
		if rnd != nil {
			n = rnd.Int64N(int64(span))
		} else {
			n = rand.Int64N(int64(span))
		}
		return s.Add(time.Duration(n)), true
	}
	return time.Time{}, false
}

// PendingFile is the name of the pending reboot record in the state dir.
const PendingFile = "pending-reboot.json"

// PendingReboot is a reboot that was planned and has not happened yet. The
// agent keeps it in its state directory across ticks.
type PendingReboot struct {
	// At is when to reboot.
	At time.Time `json:"at"`
	// System is the system that needed the reboot.
	System string `json:"system"`
}

// StillNeeded reports whether the reboot must still happen: not once the
// machine booted into the system that needed it, nor when the newest
// system (current: the profile's target for switch and boot, what will
// be booted) no longer differs from the booted one in its boot parts. If
// the systems cannot be read it keeps the reboot.
func (p PendingReboot) StillNeeded(booted, current string) bool {
	if booted == "" {
		return false
	}
	if booted == p.System || booted == current {
		return false
	}
	if current == "" {
		current = p.System
	}
	rc, err := NeedsReboot(booted, current)
	if err != nil {
		return true
	}
	return rc.Required
}

// maxPendingFile bounds pending-reboot.json (it is a few hundred bytes).
const maxPendingFile = 64 << 10

// LoadPending reads the pending reboot from stateDir; nil when there is
// none. A damaged record (not a regular file, too large, invalid) is moved
// aside as pending-reboot.json.corrupt-<time>, so it cannot stop every
// tick: nil is returned with an error wrapping statefile.ErrUnusable that
// names where it went, once (the next call finds no file).
func LoadPending(stateDir string) (*PendingReboot, error) {
	path := filepath.Join(stateDir, PendingFile)
	var p PendingReboot
	ok, note, err := statefile.Load(path, maxPendingFile, time.Now(), func(data []byte) error {
		p = PendingReboot{}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			return err
		}
		if p.System == "" || p.At.IsZero() {
			return errors.New("no time or system")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pending reboot: %w", err)
	}
	if note != "" {
		return nil, fmt.Errorf("pending reboot: %w: %s (planned again at the next switch that needs it)", statefile.ErrUnusable, note)
	}
	if !ok {
		return nil, nil
	}
	return &p, nil
}

// SavePending records p in stateDir atomically: a crash leaves the old
// record or the new one, never a torn file.
func SavePending(stateDir string, p PendingReboot) error {
	data, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return fmt.Errorf("pending reboot: %w", err)
	}
	if err := writePending(stateDir, data); err != nil {
		return fmt.Errorf("pending reboot: %w", err)
	}
	return nil
}

// ClearPending removes the pending reboot record, if any.
func ClearPending(stateDir string) error {
	err := os.Remove(filepath.Join(stateDir, PendingFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("pending reboot: %w", err)
	}
	if err == nil {
		return atomicfile.SyncDir(stateDir)
	}
	return nil
}

// writePending creates the state directory if needed: the record may be the
// first thing the agent keeps there.
func writePending(stateDir string, data []byte) error {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(stateDir, PendingFile), append(data, '\n'), 0o644)
}
