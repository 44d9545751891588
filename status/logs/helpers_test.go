package logs

import (
	"time"

	"github.com/bento-nix/bento/status/internal/statustest"
)

var now = statustest.Now

// waitFor is how long a test waits for output before it fails; it is a
// bound on a broken run, never a pause of a passing one.
const waitFor = 20 * time.Second
