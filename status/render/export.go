package render

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/bento-nix/bento/internal/termsafe"
	"github.com/bento-nix/bento/status"
)

// JSON prints the snapshot as the documented JSON document.
// Host-written text in it has its control, bidi and format characters
// escaped (\u009b, \u202e): encoding/json writes those raw.
func JSON(w io.Writer, s *status.Snapshot) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(s); err != nil {
		return err
	}
	_, err := w.Write(termsafe.EscapeJSON(b.Bytes()))
	return err
}

// Prometheus prints the snapshot in the Prometheus text exposition
// format, for node_exporter's textfile collector. Per host: one
// bento_host_state gauge per state (1 for the host's state, 0 for the
// others, so alerts can match on the label), and comin-style gauges for the
// conditions an alert most often wants.
func Prometheus(w io.Writer, s *status.Snapshot) error {
	p := promWriter{bufio.NewWriter(w)}
	for _, m := range Metrics(s) {
		p.gauge(m.Name, m.Help)
		for _, v := range m.Samples {
			p.value(m.Name, v.Value, v.Labels...)
		}
	}
	return p.Flush()
}

// Metric is one gauge of the Prometheus metrics, with its samples. bento
// serve hands these to client_golang's registry; Prometheus prints them.
type Metric struct {
	Name, Help string
	Samples    []Sample
}

// Sample is one value of a gauge; Labels are name, value pairs.
type Sample struct {
	Labels []string
	Value  float64
}

// Metrics are the gauges Prometheus prints, in its order.
func Metrics(s *status.Snapshot) []Metric {
	ms := []Metric{
		{Name: "bento_status_timestamp_seconds", Help: "When bento status read the chroots.",
			Samples: []Sample{{Value: float64(s.GeneratedAt.Unix())}}},
		{Name: "bento_status_exit_code", Help: "The exit status bento status gave (0 all up to date, 3 pending, 4 silent, 5 failing or secrets not installed).",
			Samples: []Sample{{Value: float64(s.ExitCode)}}},
	}
	hosts := Metric{Name: "bento_hosts", Help: "Number of hosts per state."}
	for _, st := range status.States {
		hosts.Samples = append(hosts.Samples, Sample{Labels: []string{"state", string(st)}, Value: float64(s.Summary.States[st])})
	}
	state := Metric{Name: "bento_host_state", Help: "1 for the host's current state, 0 for the others."}
	for _, r := range s.Hosts {
		for _, st := range status.States {
			state.Samples = append(state.Samples, Sample{Labels: []string{"host", r.Host, "state", string(st)}, Value: b(r.State == st)})
		}
	}
	ms = append(ms, hosts, state)
	for _, g := range hostGauges {
		m := Metric{Name: g.name, Help: g.help}
		for i := range s.Hosts {
			r := &s.Hosts[i]
			if v, ok := g.value(r); ok {
				m.Samples = append(m.Samples, Sample{Labels: []string{"host", r.Host}, Value: v})
			}
		}
		ms = append(ms, m)
	}
	return ms
}

// hostGauges are the gauges with one series per host, in the order they
// are printed; a value that is not ok is left out (unknown, not 0).
var hostGauges = []struct {
	name, help string
	value      func(*status.Row) (float64, bool)
}{
	{"bento_host_last_update_failed", "1 when the host's attempt of the published version failed or rolled back.",
		func(r *status.Row) (float64, bool) {
			return b(r.State == status.Failing || r.State == status.RolledBack), true
		}},
	{"bento_host_need_to_reboot", "1 when the host reported that a new kernel, initrd or modules wait for a reboot.",
		func(r *status.Row) (float64, bool) { return b(r.RebootRequired), true }},
	{"bento_host_system_match", "1 when the host runs the system the server built, 0 when it runs another; absent when unknown.",
		func(r *status.Row) (float64, bool) {
			if r.SystemMatch == nil {
				return 0, false
			}
			return b(*r.SystemMatch), true
		}},
	{"bento_host_invalid_system", "1 when the host reported an invalid system (no store path under the Nix store): broken or hostile.",
		func(r *status.Row) (float64, bool) { return b(r.InvalidSystem), true }},
	{"bento_host_reports_over_limit", "1 when the host's reports/ was over its limits (bytes or files) when read: broken or hostile.",
		func(r *status.Row) (float64, bool) { return b(r.ReportsOverLimit), true }},
	{"bento_host_reports_bytes", "Bytes the host keeps in its reports/ (a lower bound when over the limit on files).",
		func(r *status.Row) (float64, bool) { return float64(r.ReportsBytes), true }},
	{"bento_host_last_seen_timestamp_seconds", "When the host finished its last report (by its clock); absent when it never reported.",
		func(r *status.Row) (float64, bool) { return unixOf(r.LastSeen) }},
	{"bento_host_published_timestamp_seconds", "When the host's current version was published; absent when nothing is.",
		func(r *status.Row) (float64, bool) { return unixOf(r.PublishedAt) }},
	{"bento_host_secret_errors", "Number of secrets the host reported it could not install.",
		func(r *status.Row) (float64, bool) {
			if !r.HasSecretErrors() {
				return 0, true
			}
			return float64(len(r.SecretErrors)), true
		}},
	{"bento_host_stale_after_seconds", "How long the host may stay silent before it is stale.",
		func(r *status.Row) (float64, bool) { return float64(r.StaleAfterSeconds), true }},
}

func b(ok bool) float64 {
	if ok {
		return 1
	}
	return 0
}

func unixOf(t *time.Time) (float64, bool) {
	if t == nil {
		return 0, false
	}
	return float64(t.Unix()), true
}

// promWriter writes the text exposition format.
type promWriter struct{ *bufio.Writer }

func (p promWriter) gauge(name, help string) {
	fmt.Fprintf(p, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
}

// value writes one sample; labels are name, value pairs.
func (p promWriter) value(name string, v float64, labels ...string) {
	p.WriteString(name)
	if len(labels) > 0 {
		p.WriteByte('{')
		for i := 0; i < len(labels); i += 2 {
			if i > 0 {
				p.WriteByte(',')
			}
			p.WriteString(labels[i])
			p.WriteString(`="`)
			p.WriteString(escapeLabel(labels[i+1]))
			p.WriteByte('"')
		}
		p.WriteByte('}')
	}
	p.WriteByte(' ')
	p.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
	p.WriteByte('\n')
}

func escapeLabel(s string) string {
	if !strings.ContainsAny(s, "\\\"\n") {
		return s
	}
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}
