package publish

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/bento-nix/bento/internal/atomicfile"
)

// sequenceFile, under <root>/.bento-state/<host>/, holds the highest
// sequence ever reserved for the host's manifests.
const sequenceFile = "sequence"

// nextSequence reserves the sequence of the host's next manifest: above
// the record's, above the live manifest's, and at least the publication
// time in milliseconds, so that even a lost state directory (a server
// restored from an old backup) goes on numbering upwards while the
// clock does.
//
// The record is written and fsynced before the manifest naming the
// number is even written: a deploy killed after the reservation leaves
// a number that no manifest went live with, and the next deploy takes
// the one after. A number is never given to two different manifests.
func (p *Publisher) nextSequence(j *hostJob, now time.Time) (uint64, error) {
	dir := p.stateDir(j.name)
	if err := p.ensurePrivateDir(filepath.Dir(dir)); err != nil {
		return 0, err
	}
	if err := p.ensurePrivateDir(dir); err != nil {
		return 0, err
	}
	file := filepath.Join(dir, sequenceFile)
	last, err := readSequence(file)
	if err != nil {
		// Damaged: the live manifest and the clock still bound it from
		// below; the note says why numbers may jump.
		j.note("sequence record %s is unreadable (%v): numbering from the live manifest and the clock", file, err)
	}
	if j.cur != nil && j.cur.Sequence > last {
		last = j.cur.Sequence
	}
	next := last + 1
	if ms := now.UnixMilli(); ms > 0 && uint64(ms) > next {
		next = uint64(ms)
	}
	if err := atomicfile.WriteFile(file, []byte(strconv.FormatUint(next, 10)+"\n"), 0o600); err != nil {
		return 0, fmt.Errorf("sequence record: %w", err)
	}
	return next, nil
}

func readSequence(file string) (uint64, error) {
	data, err := readCapped(file, 64)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("not a number")
	}
	return n, nil
}
