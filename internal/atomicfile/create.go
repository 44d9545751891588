package atomicfile

import (
	"io/fs"
	"os"
	"path"
)

// Create makes the new file path with permissions perm (the umask
// applies), writes data to it, fsyncs it and closes it. A path that exists
// already is an error wrapping fs.ErrExist, and is left as it is; on any
// error after the creation path is removed. Unlike WriteNew it writes path
// itself, so a kill -9 midway leaves a partial path: callers write a
// temporary name that they rename afterwards or that a cleaner recognises.
func Create(path string, data []byte, perm fs.FileMode) error {
	return create(plainDir{}, path, perm, writeData(data))
}

// CreateIn is Create for name below root, which it cannot leave.
func CreateIn(root *os.Root, name string, data []byte, perm fs.FileMode) error {
	return create(root, name, perm, writeData(data))
}

// ReplaceIn replaces name below root atomically: data goes to the new
// file tmp (beside name, below root; an existing tmp is an error), is
// fsynced, renamed over name, and the rename is made durable by syncing
// the directory. On an error before the rename tmp is removed and name is
// untouched; a kill -9 leaves at most tmp beside it.
func ReplaceIn(root *os.Root, name, tmp string, data []byte, perm fs.FileMode) error {
	if err := CreateIn(root, tmp, data, perm); err != nil {
		return err
	}
	if err := root.Rename(tmp, name); err != nil {
		root.Remove(tmp)
		return err
	}
	d, err := root.Open(path.Dir(name))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// dir is where create makes a file: an *os.Root, or plainDir.
type dir interface {
	OpenFile(name string, flag int, perm fs.FileMode) (*os.File, error)
	Remove(name string) error
}

// plainDir is the file system, names being paths.
type plainDir struct{}

func (plainDir) OpenFile(name string, flag int, perm fs.FileMode) (*os.File, error) {
	return os.OpenFile(name, flag, perm)
}

func (plainDir) Remove(name string) error { return os.Remove(name) }

// create is Create in d, with write filling the file.
func create(d dir, name string, perm fs.FileMode, write func(*os.File) error) error {
	f, err := d.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if err := fillSynced(f, write); err != nil {
		d.Remove(name)
		return err
	}
	return nil
}

func writeData(data []byte) func(*os.File) error {
	return func(f *os.File) error {
		_, err := f.Write(data)
		return err
	}
}

// fillSynced runs write on f, then fsyncs f and closes it. f is closed
// whatever fails; the first error is returned.
func fillSynced(f *os.File, write func(*os.File) error) error {
	err := write(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
