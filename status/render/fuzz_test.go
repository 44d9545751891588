package render

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/bento-nix/bento/internal/termsafe"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/status"
	"github.com/bento-nix/bento/status/internal/statustest"
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

// FuzzRenderReport feeds the bytes a host may write as reports/status.json
// through everything bento status does with them: read from the chroot,
// judge, print as a table, JSON and Prometheus metrics. It must never
// panic; the table and the metrics hold no terminal control; the JSON
// document is valid and escapes every control. (status's FuzzParseReport
// checks the row itself, with the same seeds.)
func FuzzRenderReport(f *testing.F) {
	const version = "0123456789abcdef"
	good, _ := json.Marshal(manifest.Report{Format: manifest.Format, Host: "alpha",
		SeenVersion: version, AppliedVersion: version, AttemptedVersion: version,
		Stage: manifest.StageConfirmed, Result: manifest.ResultSuccess, CurrentSystem: statustest.SysA,
		Mode: "build", Operation: "switch", StartedAt: now.Add(-time.Minute), FinishedAt: now,
		Log: "0123456789abcdef-20250314T120000Z.log.gz"})
	f.Add(good)
	f.Add([]byte(`{"format":1,"host":"alpha","stage":"failed","result":"failure","error":"\u001b]52;c;eA==\u0007\u009b2J\u202e","finishedAt":"2025-03-14T12:00:00Z","secretErrors":{"\u001b[2J":"x"}}`))
	f.Add([]byte(`{"format":1,"finishedAt":"2025-03-14T12:00:00Z","currentSystem":"/srv/chroot/alpha/reports/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-alpha"}`))
	f.Add([]byte(`{"format":1,"finishedAt":"2025-03-14T12:00:00Z","operation":"boot","actualToplevel":"path:/etc"}`))
	f.Add([]byte(`{"format":1,"host":"beta","finishedAt":"x"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := statustest.New(t)
		c.Publish("alpha", version, now.Add(-time.Hour), statustest.SysA)
		c.Raw("alpha", manifest.StatusFile, data)
		snap, err := status.Collect(context.Background(), status.Options{Root: c.Root, Now: now, StoreDir: "/nix/store"})
		if err != nil {
			t.Fatal(err)
		}
		if len(snap.Hosts) != 1 {
			t.Fatalf("%d rows, want alpha's", len(snap.Hosts))
		}
		var table, js, prom bytes.Buffer
		if err := Table(&table, snap, TableOptions{Width: 80}); err != nil {
			t.Fatal(err)
		}
		if i := unsafeAt(table.String()); i >= 0 {
			t.Fatalf("the table holds a control at %d: %q", i, table.String())
		}
		if err := JSON(&js, snap); err != nil {
			t.Fatal(err)
		}
		if i := unsafeAt(js.String()); i >= 0 {
			t.Fatalf("the JSON document holds a raw control at %d: %q", i, js.String())
		}
		var doc map[string]any
		if err := json.Unmarshal(js.Bytes(), &doc); err != nil {
			t.Fatalf("the JSON document is invalid: %v\n%s", err, js.String())
		}
		if err := Prometheus(&prom, snap); err != nil {
			t.Fatal(err)
		}
		if i := unsafeAt(prom.String()); i >= 0 {
			t.Fatalf("the metrics hold a control at %d: %q", i, prom.String())
		}
	})
}
