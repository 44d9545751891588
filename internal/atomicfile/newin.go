package atomicfile

import (
	"io/fs"
	"os"
)

// WriteNewIn creates name below root, which must not exist (O_EXCL: an
// existing name is an error wrapping fs.ErrExist and is left as it is),
// with permissions perm (the umask applies), writes data to it, fsyncs it
// and closes it. On any error after the creation name is removed; a kill
// -9 midway leaves a partial name, which is why callers write a temporary
// name that they rename afterwards or that a cleaner recognises.
func WriteNewIn(root *os.Root, name string, data []byte, perm fs.FileMode) error {
	return createIn(root, name, perm, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// createIn is WriteNewIn with write filling the file.
func createIn(root *os.Root, name string, perm fs.FileMode, write func(*os.File) error) error {
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if err := fillSynced(f, write); err != nil {
		root.Remove(name)
		return err
	}
	return nil
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
