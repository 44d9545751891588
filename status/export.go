package status

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/bento-nix/bento/internal/termsafe"
)

// WriteJSON prints the snapshot as the documented JSON document.
// Host-written text in it has its control, bidi and format characters
// escaped (\u009b, \u202e): encoding/json writes those raw.
func WriteJSON(w io.Writer, s *Snapshot) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(s); err != nil {
		return err
	}
	_, err := w.Write(termsafe.EscapeJSON(b.Bytes()))
	return err
}

// WritePrometheus prints the snapshot in the Prometheus text exposition
// format, for node_exporter's textfile collector. Per host: one
// bento_host_state gauge per state (1 for the host's state, 0 for the
// others, so alerts can match on the label), and comin-style gauges for the
// conditions an alert most often wants.
func WritePrometheus(w io.Writer, s *Snapshot) error {
	bw := bufio.NewWriter(w)
	gauge := func(name, help string) {
		fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
	}
	value := func(name string, v float64, labels ...string) {
		bw.WriteString(name)
		if len(labels) > 0 {
			bw.WriteByte('{')
			for i := 0; i < len(labels); i += 2 {
				if i > 0 {
					bw.WriteByte(',')
				}
				bw.WriteString(labels[i])
				bw.WriteString(`="`)
				bw.WriteString(escapeLabel(labels[i+1]))
				bw.WriteByte('"')
			}
			bw.WriteByte('}')
		}
		bw.WriteByte(' ')
		bw.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
		bw.WriteByte('\n')
	}
	b := func(ok bool) float64 {
		if ok {
			return 1
		}
		return 0
	}

	gauge("bento_status_timestamp_seconds", "When bento status read the chroots.")
	value("bento_status_timestamp_seconds", float64(s.GeneratedAt.Unix()))
	gauge("bento_status_exit_code", "The exit status bento status gave (0 all up to date, 3 pending, 4 silent, 5 failing or secrets not installed).")
	value("bento_status_exit_code", float64(s.ExitCode))
	gauge("bento_hosts", "Number of hosts per state.")
	for _, st := range States {
		value("bento_hosts", float64(s.Summary.States[st]), "state", string(st))
	}
	gauge("bento_host_state", "1 for the host's current state, 0 for the others.")
	for _, r := range s.Hosts {
		for _, st := range States {
			value("bento_host_state", b(r.State == st), "host", r.Host, "state", string(st))
		}
	}
	gauge("bento_host_last_update_failed", "1 when the host's attempt of the published version failed or rolled back.")
	for _, r := range s.Hosts {
		value("bento_host_last_update_failed", b(r.State == Failing || r.State == RolledBack), "host", r.Host)
	}
	gauge("bento_host_need_to_reboot", "1 when the host reported that a new kernel, initrd or modules wait for a reboot.")
	for _, r := range s.Hosts {
		value("bento_host_need_to_reboot", b(r.RebootRequired), "host", r.Host)
	}
	gauge("bento_host_system_match", "1 when the host runs the system the server built, 0 when it runs another; absent when unknown.")
	for _, r := range s.Hosts {
		if r.SystemMatch != nil {
			value("bento_host_system_match", b(*r.SystemMatch), "host", r.Host)
		}
	}
	gauge("bento_host_invalid_system", "1 when the host reported an invalid system (no store path under the Nix store): broken or hostile.")
	for _, r := range s.Hosts {
		value("bento_host_invalid_system", b(r.InvalidSystem), "host", r.Host)
	}
	gauge("bento_host_reports_over_limit", "1 when the host's reports/ was over its limits (bytes or files) when read: broken or hostile.")
	for _, r := range s.Hosts {
		value("bento_host_reports_over_limit", b(r.ReportsOverLimit), "host", r.Host)
	}
	gauge("bento_host_reports_bytes", "Bytes the host keeps in its reports/ (a lower bound when over the limit on files).")
	for _, r := range s.Hosts {
		value("bento_host_reports_bytes", float64(r.ReportsBytes), "host", r.Host)
	}
	gauge("bento_host_last_seen_timestamp_seconds", "When the host finished its last report (by its clock); absent when it never reported.")
	for _, r := range s.Hosts {
		if r.LastSeen != nil {
			value("bento_host_last_seen_timestamp_seconds", float64(r.LastSeen.Unix()), "host", r.Host)
		}
	}
	gauge("bento_host_published_timestamp_seconds", "When the host's current version was published; absent when nothing is.")
	for _, r := range s.Hosts {
		if r.PublishedAt != nil {
			value("bento_host_published_timestamp_seconds", float64(r.PublishedAt.Unix()), "host", r.Host)
		}
	}
	gauge("bento_host_secret_errors", "Number of secrets the host reported it could not install.")
	for _, r := range s.Hosts {
		n := 0
		if r.hasSecretErrors() {
			n = len(r.SecretErrors)
		}
		value("bento_host_secret_errors", float64(n), "host", r.Host)
	}
	gauge("bento_host_stale_after_seconds", "How long the host may stay silent before it is stale.")
	for _, r := range s.Hosts {
		value("bento_host_stale_after_seconds", float64(r.StaleAfterSeconds), "host", r.Host)
	}
	return bw.Flush()
}

func escapeLabel(s string) string {
	if !strings.ContainsAny(s, "\\\"\n") {
		return s
	}
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}
