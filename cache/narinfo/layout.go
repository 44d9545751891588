package narinfo

import "strings"

// The layout of a binary cache directory, shared by the server side that
// writes it (cache) and the client side that serves it (sftpcache), so the
// two agree on names without one importing the other.

// CacheInfoFile is the file a binary cache is recognised by.
const CacheInfoFile = "nix-cache-info"

// NARDir holds the NAR files of a cache, as Nix lays it out.
const NARDir = "nar"

// ValidNARName reports whether name is a NAR file name as Nix writes them
// in a binary cache: <52-character base32 file hash>.nar, optionally with
// a compression suffix.
func ValidNARName(name string) bool {
	stem, ok := strings.CutSuffix(name, ".nar")
	if !ok {
		i := strings.LastIndex(name, ".nar.")
		if i < 0 {
			return false
		}
		switch name[i+len(".nar."):] {
		case "xz", "bz2", "zst", "br", "gz", "lz", "lz4":
		default:
			return false
		}
		stem = name[:i]
	}
	if len(stem) != 52 {
		return false
	}
	_, _, err := ParseHash("sha256:" + stem)
	return err == nil
}
