package render

import (
	"testing"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/status/internal/statustest"
)

var now = statustest.Now

func goldenFleet(t *testing.T) (string, *fleet.Fleet) { return statustest.GoldenFleet(t) }
