package status

import (
	"io"
	"os"

	"github.com/bento-nix/bento/internal/atomicfile"
)

// WriteFileAtomic replaces path with what write produces, so a reader (the
// textfile collector) sees the old file or the new one, never a part.
func WriteFileAtomic(path string, perm os.FileMode, write func(io.Writer) error) error {
	return atomicfile.Write(path, perm, write)
}
