package manifest

import (
	"strings"
	"testing"
	"unicode"
)

const goodProgress = `{"format":1,"host":"web-1","version":"3f2a9c0d1b4e5f67","startedAt":"2026-12-03T10:00:00Z","stage":"building","stageStartedAt":"2026-12-03T10:00:05Z","log":"3f2a9c0d1b4e5f67-20261203T100000.000Z.log.gz"}`

// progress.json is the host's: everything in it is checked before status
// shows it on a terminal.
func TestParseProgress(t *testing.T) {
	swap := func(old, new string) string { return strings.Replace(goodProgress, old, new, 1) }
	for _, tc := range []struct {
		name, data, err string
	}{
		{"good", goodProgress, ""},
		{"another host", swap(`"web-1"`, `"db-1"`), `it is for host "db-1"`},
		{"unknown stage", swap(`"building"`, `"rm -rf"`), "unknown stage"},
		{"escape in the stage", swap(`"building"`, `"\u001b[2Jbuilding"`), "unknown stage"},
		{"escape in the version", swap(`"3f2a9c0d1b4e5f67"`, `"v\u001b]0;x\u0007"`), "version is not a plain name"},
		{"path as the log", swap(`"3f2a9c0d1b4e5f67-20261203T100000.000Z.log.gz"`, `"../../etc/passwd"`), "log is not a plain file name"},
		{"hidden log", swap(`"3f2a9c0d1b4e5f67-20261203T100000.000Z.log.gz"`, `".x.log.gz"`), "log is not a plain file name"},
		{"stage before the attempt", swap(`"2026-12-03T10:00:05Z"`, `"2026-12-03T09:00:00Z"`), "its stage started before the attempt"},
		{"other format", swap(`"format":1`, `"format":2`), "format 2 is not 1"},
		{"not JSON", `{"format":`, "progress.json"},
		{"too large", goodProgress + strings.Repeat(" ", MaxProgressSize), "over the"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ParseProgress([]byte(tc.data), "web-1")
			switch {
			case tc.err == "" && (err != nil || p.Stage != ProgressBuilding):
				t.Errorf("%+v, %v", p, err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Errorf("error %v, want %q", err, tc.err)
			}
		})
	}
}

func FuzzParseProgress(f *testing.F) {
	f.Add([]byte(goodProgress))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseProgress(data, "web-1")
		if err != nil {
			return
		}
		for _, s := range []string{string(p.Stage), p.Version, p.Log, p.Host} {
			for _, r := range s {
				if !unicode.IsPrint(r) || r > 0x7e {
					t.Fatalf("accepted %q with %q in it", data, r)
				}
			}
		}
		if p.StageStartedAt.Before(p.StartedAt) || strings.Contains(p.Log, "/") {
			t.Fatalf("accepted %q: %+v", data, p)
		}
	})
}
