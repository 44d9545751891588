package status

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/bento-nix/bento/internal/termsafe"
	"github.com/bento-nix/bento/manifest"
)

// unsafeAt is the offset of the first rune of s that must not reach a
// terminal (or of a byte that is not UTF-8), -1 when there is none.
func unsafeAt(s string) int {
	for i, r := range s {
		if r == '\n' {
			continue
		}
		if r == utf8.RuneError || termsafe.Unsafe(r) {
			return i
		}
	}
	return -1
}

// FuzzParseReport feeds the bytes a host may write as reports/status.json
// through what the model does with them: parse and judge. It must never
// panic; the system a row shows is a store path right under the store
// directory or nothing (anything else could be a flake the host wrote); the
// message holds no terminal control. status/render's FuzzRenderReport takes
// the same bytes on through the table, JSON and Prometheus renderers.
func FuzzParseReport(f *testing.F) {
	good, _ := json.Marshal(manifest.Report{Format: manifest.Format, Host: "alpha",
		SeenVersion: "0123456789abcdef", AppliedVersion: "0123456789abcdef", AttemptedVersion: "0123456789abcdef",
		Stage: manifest.StageConfirmed, Result: manifest.ResultSuccess, CurrentSystem: sysA,
		Mode: "build", Operation: "switch", StartedAt: now.Add(-time.Minute), FinishedAt: now,
		Log: "0123456789abcdef-20250314T120000Z.log.gz"})
	f.Add(good)
	f.Add([]byte(`{"format":1,"host":"alpha","stage":"failed","result":"failure","error":"\u001b]52;c;eA==\u0007\u009b2J\u202e","finishedAt":"2025-03-14T12:00:00Z","secretErrors":{"\u001b[2J":"x"}}`))
	f.Add([]byte(`{"format":1,"finishedAt":"2025-03-14T12:00:00Z","currentSystem":"/srv/chroot/alpha/reports/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-alpha"}`))
	f.Add([]byte(`{"format":1,"finishedAt":"2025-03-14T12:00:00Z","operation":"boot","actualToplevel":"path:/etc"}`))
	f.Add([]byte(`{"format":1,"host":"beta","finishedAt":"x"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rep, err := parseReport(data, "alpha")
		in := hostInput{
			name: "alpha", chroot: true, report: rep, reportErr: err,
			manifest:   &manifestInfo{host: "alpha", version: "0123456789abcdef", publishedAt: now.Add(-time.Hour), expected: sysA},
			now:        now,
			staleAfter: time.Hour,
			storeDir:   "/nix/store",
		}
		row := decide(in)
		if row.System != "" {
			if err := CheckStorePath("/nix/store", row.System); err != nil {
				t.Fatalf("the row shows a system that is not a store path: %v", err)
			}
		}
		if i := unsafeAt(row.Message); i >= 0 || strings.Contains(row.Message, "\n") {
			t.Fatalf("message %q holds a control at %d", row.Message, i)
		}
	})
}
