package render

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/status"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func TestPrometheusParses(t *testing.T) {
	root, f := goldenFleet(t)
	s, err := status.Collect(context.Background(), status.Options{Root: root, Fleet: f, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Prometheus(&buf, s); err != nil {
		t.Fatal(err)
	}
	// The legacy name rules: what node_exporter's textfile collector accepts.
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(&buf)
	if err != nil {
		t.Fatalf("the textfile collector would reject the output: %v", err)
	}
	get := func(name string, labels map[string]string) (float64, bool) {
		fam, ok := fams[name]
		if !ok {
			t.Fatalf("no metric %s", name)
		}
		if fam.GetType() != dto.MetricType_GAUGE {
			t.Errorf("%s is %s, want a gauge", name, fam.GetType())
		}
	next:
		for _, m := range fam.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue next
				}
			}
			return m.GetGauge().GetValue(), true
		}
		return 0, false
	}
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"bento_host_state", map[string]string{"host": "db", "state": "failing"}, 1},
		{"bento_host_state", map[string]string{"host": "db", "state": "up-to-date"}, 0},
		{"bento_host_state", map[string]string{"host": "web-1", "state": "up-to-date"}, 1},
		{"bento_host_last_update_failed", map[string]string{"host": "db"}, 1},
		{"bento_host_last_update_failed", map[string]string{"host": "kiosk"}, 1},
		{"bento_host_last_update_failed", map[string]string{"host": "web-1"}, 0},
		{"bento_host_need_to_reboot", map[string]string{"host": "edge"}, 1},
		{"bento_host_need_to_reboot", map[string]string{"host": "web-1"}, 0},
		{"bento_host_system_match", map[string]string{"host": "gpu"}, 0},
		{"bento_host_system_match", map[string]string{"host": "web-1"}, 1},
		{"bento_host_last_seen_timestamp_seconds", map[string]string{"host": "web-1"}, float64(now.Add(-3 * time.Minute).Unix())},
		{"bento_hosts", map[string]string{"state": "stale"}, 2},
		{"bento_hosts", map[string]string{"state": "pending"}, 0},
		{"bento_status_exit_code", nil, status.ExitFailing},
		{"bento_status_timestamp_seconds", nil, float64(now.Unix())},
	}
	for _, c := range checks {
		v, ok := get(c.name, c.labels)
		if !ok || v != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, v, ok, c.want)
		}
	}
	// Unknown facts are absent, not zero: a never-seen host has no last-seen.
	if _, ok := get("bento_host_last_seen_timestamp_seconds", map[string]string{"host": "new-box"}); ok {
		t.Error("never-seen host has a last-seen timestamp")
	}
	if _, ok := get("bento_host_system_match", map[string]string{"host": "new-box"}); ok {
		t.Error("never-seen host has a system match")
	}
	if n := len(fams["bento_host_state"].GetMetric()); n != len(s.Hosts)*len(status.States) {
		t.Errorf("%d bento_host_state series, want %d", n, len(s.Hosts)*len(status.States))
	}
}

// TestPrometheusFileIsAtomic rewrites the file while readers parse it:
// every read sees a whole exposition, old or new.
func TestPrometheusFileIsAtomic(t *testing.T) {
	root, f := goldenFleet(t)
	s, err := status.Collect(context.Background(), status.Options{Root: root, Fleet: f, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "bento.prom")
	write := func() {
		if err := atomicfile.Write(path, 0o644, func(w io.Writer) error { return Prometheus(w, s) }); err != nil {
			t.Fatal(err)
		}
	}
	write()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 200; i++ {
			write()
		}
		close(stop)
	}()
	reads := 0
	for done := false; !done; reads++ {
		select {
		case <-stop:
			done = true
		default:
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		p := expfmt.NewTextParser(model.LegacyValidation)
		fams, err := p.TextToMetricFamilies(bytes.NewReader(data))
		if err != nil || len(fams["bento_host_state"].GetMetric()) != len(s.Hosts)*len(status.States) {
			t.Fatalf("read %d saw a partial file (%d bytes): %v", reads, len(data), err)
		}
	}
	wg.Wait()
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, %v; want 0644 (the collector runs as another user)", st.Mode(), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

func TestJSONFields(t *testing.T) {
	root, f := goldenFleet(t)
	s, err := status.Collect(context.Background(), status.Options{Root: root, Fleet: f, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := JSON(&buf, s); err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"format", "generatedAt", "root", "flake", "summary", "exitCode", "hosts"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("document lacks %q", k)
		}
	}
	sum, _ := doc["summary"].(map[string]any)
	for _, k := range []string{"total", "states", "secretErrors"} {
		if _, ok := sum[k]; !ok || len(sum) != 3 {
			t.Errorf("summary %v: want exactly total, states, secretErrors (docs/status.md)", sum)
		}
	}
	if doc["exitCode"] != float64(status.ExitFailing) || doc["generatedAt"] != "2025-03-14T12:00:00Z" {
		t.Errorf("exitCode %v generatedAt %v", doc["exitCode"], doc["generatedAt"])
	}
	// Every documented host field is present on every host, null or not,
	// so scripts never meet a missing key.
	fields := []string{"host", "state", "message", "inFlake", "publishedVersion", "publishedAt", "expectedSystem", "serverBuilt",
		"seenVersion", "appliedVersion", "attemptedVersion", "stage", "result", "error", "rollbackReason", "system", "systemMatch",
		"rebootRequired", "rebootScheduled", "attempts", "nextRetry", "lastSeen", "lastSeenSeconds", "staleAfterSeconds", "log", "agentVersion", "bytesFetched", "secretErrors", "reportsBytes", "reportsFiles", "server", "progress"}
	hosts := doc["hosts"].([]any)
	for _, h := range hosts {
		h := h.(map[string]any)
		for _, k := range fields {
			if _, ok := h[k]; !ok {
				t.Errorf("host %v lacks %q", h["host"], k)
			}
		}
		if len(h) != len(fields) {
			t.Errorf("host %v has %d fields, documented %d: update docs/status.md and this list", h["host"], len(h), len(fields))
		}
	}
	web := hosts[10].(map[string]any)
	if web["host"] != "web-1" || web["state"] != "up-to-date" || web["lastSeenSeconds"] != float64(180) || web["systemMatch"] != true {
		t.Errorf("web-1 row: %v", web)
	}
}

// The gauges for a host that is broken or hostile (status's attack and
// limits tests check the rows that set these flags).
func TestPrometheusFlagsHostileHosts(t *testing.T) {
	s := &status.Snapshot{Format: status.Format, GeneratedAt: now, Hosts: []status.Row{
		{Host: "alpha", State: status.Unreadable, InvalidSystem: true},
		{Host: "beta", State: status.Unreadable, ReportsOverLimit: true},
		{Host: "gamma", State: status.UpToDate},
	}}
	var buf bytes.Buffer
	if err := Prometheus(&buf, s); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`bento_host_invalid_system{host="alpha"} 1`,
		`bento_host_invalid_system{host="beta"} 0`,
		`bento_host_invalid_system{host="gamma"} 0`,
		`bento_host_reports_over_limit{host="alpha"} 0`,
		`bento_host_reports_over_limit{host="beta"} 1`,
		`bento_host_reports_over_limit{host="gamma"} 0`,
	} {
		if !strings.Contains(buf.String(), want+"\n") {
			t.Errorf("metrics lack %s:\n%s", want, buf.String())
		}
	}
}
