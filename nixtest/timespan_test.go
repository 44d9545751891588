package nixtest

import (
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/internal/timespan"
)

// The module's duration type and the agent's parser (internal/timespan)
// accept the same spellings and read the same length: what the module lets
// through reaches the agent unchanged, and the module's own arithmetic
// (TimeoutStopSec = confirmTimeout + 60s, initialDelay <= maxDelay) is the
// agent's.
func TestSpanSyntaxAgreesWithTheAgent(t *testing.T) {
	needNix(t)
	spellings := []string{
		"90s", "15min", "1h 30min", "2 days", "1h30m", "1m30s", "1.5h", "500ms", "5", "1min 30",
		" 2h ", "15 minutes", "1w", "1M", "1y", "1 h 30", "3 hours 2 min", "10sec", "2hr", "1d 1h",
		"0", "1.25s", "015s", "1µs 1s", "1usec",
		// Not spans.
		"", " ", "15 mins", "fortnight", "h", "-5s", "1e3s", "1..5s", "5 s s", "infinity", "1h,30min", "30 1h", ".5s",
	}
	list, _ := json.Marshal(spellings)
	key := publicKey(t)
	expr := fmt.Sprintf(`let
	  spellings = builtins.fromJSON %s;
	  one = s: let
	    r = import %s { modules = [ %s { services.bento = { enable = true; server = "s"; serverHostKey = %s; confirmTimeout = s; }; } ]; };
	    stop = r.config.systemd.services.bento-agent.serviceConfig.TimeoutStopSec;
	    t = builtins.tryEval (builtins.deepSeq stop stop);
	  in if t.success then t.value else null;
	in map one spellings`,
		nixString(string(list)), nixString(filepath.Join(repoRoot(t), "nixtest/testdata/eval.nix")),
		nixString(filepath.Join(repoRoot(t), "modules/client.nix")), nixString(key))
	var stops []*string
	evalJSON(t, expr, &stops)
	for i, s := range spellings {
		d, err := timespan.Parse(s)
		switch {
		case stops[i] == nil && err == nil:
			t.Errorf("%q: the module refuses it, the agent reads %s", s, d)
		case stops[i] != nil && err != nil:
			t.Errorf("%q: the module accepts it (TimeoutStopSec %s), the agent refuses it: %v", s, *stops[i], err)
		case err == nil:
			want := fmt.Sprintf("%ds", int64(math.Ceil(d.Seconds()))+60)
			if *stops[i] != want {
				t.Errorf("%q: TimeoutStopSec = %s, want %s (the agent reads %s)", s, *stops[i], want, strings.TrimSpace(d.String()))
			}
		}
	}
}
