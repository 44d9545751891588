// Package statefile reads the small files a program keeps between runs
// (state, records, reports waiting) as hostile input: bounded in size,
// refused unless a regular file, never blocking on a FIFO or following a
// symlink to /dev/zero. A file that cannot be used is moved aside as
// <name>.corrupt-<time>, so the caller carries on from a safe default and
// the damage is kept for a human, and is reported once (the next run no
// longer finds it).
package statefile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
	"time"
)

// ErrUnusable is wrapped by every error that says the file exists but is
// not a usable state file (not regular, too large, unparsable).
var ErrUnusable = errors.New("unusable state file")

// Read returns the content of path, at most max bytes. A missing file is
// (nil, error wrapping fs.ErrNotExist). A symlink, a FIFO, a device or a
// directory, or a file over max bytes, is an error wrapping ErrUnusable.
func Read(path string, max int64) ([]byte, error) {
	// O_NOFOLLOW: a symlink is refused rather than followed anywhere;
	// O_NONBLOCK: opening a FIFO does not wait for a writer.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%s: %w: it is a symbolic link, not a regular file", path, ErrUnusable)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w: not a regular file (%s)", path, ErrUnusable, fi.Mode().Type())
	}
	if fi.Size() > max {
		return nil, fmt.Errorf("%s: %w: %d bytes, over the %d byte limit", path, ErrUnusable, fi.Size(), max)
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%s: %w: over the %d byte limit", path, ErrUnusable, max)
	}
	return data, nil
}

// ReadRegular reads f, opened as name, when it is a regular file, and at
// most max bytes of it: a FIFO or a device is refused, not read. Over max
// it returns an error together with the max+1 bytes read, so that a
// caller that drops the error still never sees a file cut to size.
func ReadRegular(f *os.File, name string, max int64) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", name)
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err == nil && int64(len(data)) > max {
		err = fmt.Errorf("%s is over %d bytes", name, max)
	}
	return data, err
}

// Unusable wraps a parse error of path's content as ErrUnusable.
func Unusable(path string, err error) error {
	return fmt.Errorf("%s: %w: %v", path, ErrUnusable, err)
}

// corruptLayout sorts as text in time order and has no colon.
const corruptLayout = "20060102T150405Z"

// MoveAside renames path to path.corrupt-<time> and returns the new name.
// A file already gone is not an error ("" returned).
func MoveAside(path string, now time.Time) (string, error) {
	to := path + ".corrupt-" + now.UTC().Format(corruptLayout)
	for i := 1; ; i++ {
		if _, err := os.Lstat(to); errors.Is(err, fs.ErrNotExist) {
			break
		}
		to = fmt.Sprintf("%s.corrupt-%s-%d", path, now.UTC().Format(corruptLayout), i)
	}
	if err := os.Rename(path, to); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil
		}
		return "", fmt.Errorf("move %s aside: %w", path, err)
	}
	return to, nil
}

// Load reads path (at most max bytes) and parses it with parse. A missing
// file gives ok false and no error. An unusable one (not regular, too
// large, or parse fails) is moved aside: ok is false and note says what
// happened, for the caller to report; err is only for failures to read or
// to move the file (the caller cannot carry on safely).
func Load(path string, max int64, now time.Time, parse func([]byte) error) (ok bool, note string, err error) {
	data, err := Read(path, max)
	if errors.Is(err, fs.ErrNotExist) {
		return false, "", nil
	}
	if err == nil {
		if perr := parse(data); perr != nil {
			err = Unusable(path, perr)
		} else {
			return true, "", nil
		}
	}
	if !errors.Is(err, ErrUnusable) {
		return false, "", err
	}
	to, merr := MoveAside(path, now)
	if merr != nil {
		return false, "", errors.Join(err, merr)
	}
	return false, fmt.Sprintf("%v; moved aside to %s, starting from a default", err, to), nil
}
