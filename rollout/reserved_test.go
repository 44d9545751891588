package rollout

import (
	"slices"
	"testing"

	"github.com/bento-nix/bento/publish"
)

// The rollout record's directory must be a name no host can take.
func TestDirIsAReservedHostName(t *testing.T) {
	if !slices.Contains(publish.ReservedNames, Dir) {
		t.Errorf("publish.ReservedNames %v lacks %q: a host of that name would share the rollout record's directory", publish.ReservedNames, Dir)
	}
}
