package mirror

import (
	"io/fs"
	"syscall"
)

// statOwner is the uid and gid of a local file.
func statOwner(fi fs.FileInfo) ([2]int, bool) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return [2]int{int(st.Uid), int(st.Gid)}, true
	}
	return [2]int{}, false
}
