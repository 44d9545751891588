package publish

import "path/filepath"

// LastSequence is the highest sequence reserved for host under root (0
// when none): what the next publication will exceed. Only the tests ask.
func LastSequence(root, host string) (uint64, error) {
	return readSequence(filepath.Join(root, StateDir, host, sequenceFile))
}
