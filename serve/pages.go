package serve

import (
	"bytes"
	"errors"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/termsafe"
	"github.com/bento-nix/bento/internal/timespan"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/status"
	"github.com/bento-nix/bento/status/logs"
)

// DefaultLogTail is how much of a host's latest log its page shows.
const DefaultLogTail = 32 << 10

// maxLogRead bounds how much of a log is decompressed to find its tail.
const maxLogRead = 16 << 20

// timelineLimit is how many events a host page shows.
const timelineLimit = 200

var pages = template.Must(template.New("").Funcs(template.FuncMap{
	"short": status.ShortVersion,
	"stamp": func(t *time.Time) string {
		if t == nil {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	},
}).ParseFS(assets, "assets/*.html"))

// stateClass is the CSS class of a state: the colours of bento status's
// table (red needs action, magenta drifts, yellow is silence, cyan is work
// in progress, green is fine, grey is not deployed).
func stateClass(s status.State) string {
	switch s {
	case status.Unreadable, status.Failing, status.RolledBack:
		return "st-bad"
	case status.Drift:
		return "st-drift"
	case status.Stale, status.NeverSeen:
		return "st-silent"
	case status.Pending, status.RebootRequired, status.Unpublished:
		return "st-work"
	case status.UpToDate:
		return "st-ok"
	}
	return "st-off"
}

// Page is what every page's frame needs.
type Page struct {
	Title string
	// Live is the URL of this view's fragment, fetched again on every change.
	Live string
	Gen  uint64
	// Refresh is the refresh period without JavaScript, in seconds.
	Refresh   int
	Generated string
	Root      string
	Err       string
}

// filter is the fleet view's query: ?state=&tag=&q=&sort=.
type filter struct {
	State, Tag, Q, Sort string
}

func parseFilter(q url.Values) (filter, error) {
	f := filter{State: q.Get("state"), Tag: q.Get("tag"), Q: q.Get("q"), Sort: q.Get("sort")}
	if f.Sort == "" {
		f.Sort = "state"
	}
	if err := status.SortRows(nil, f.Sort); err != nil {
		return f, fmt.Errorf("sort=%q: sort by state, name, seen or published", f.Sort)
	}
	if f.State != "" && !slices.Contains(status.States, status.State(f.State)) {
		return f, fmt.Errorf("state=%q is no state of bento status", f.State)
	}
	if len(f.Q) > 200 || len(f.Tag) > 200 {
		return f, errors.New("q and tag are at most 200 characters")
	}
	return f, nil
}

// query is the filter as a query string, with one field replaced.
func (f filter) query(key, value string) string {
	v := url.Values{}
	set := func(k, x string) {
		if k == key {
			x = value
		}
		if x != "" && !(k == "sort" && x == "state") {
			v.Set(k, x)
		}
	}
	set("state", f.State)
	set("tag", f.Tag)
	set("q", f.Q)
	set("sort", f.Sort)
	if len(v) == 0 {
		return ""
	}
	return "?" + v.Encode()
}

// matchName is the name filter: a glob when it has glob characters, else
// a substring.
func matchName(q, name string) bool {
	if q == "" {
		return true
	}
	if strings.ContainsAny(q, "*?[") {
		ok, err := path.Match(q, name)
		return ok && err == nil
	}
	return strings.Contains(name, q)
}

type counter struct {
	State  string
	N      int
	Class  string
	Href   string
	Active bool
}

type rowView struct {
	Host, Href          string
	State, Class        string
	Published, Applied  string
	PublishedFull       string
	System, SystemClass string
	Seen, SeenAt        string
	Message             string
	Secrets             bool
}

type fleetView struct {
	Page
	Filter   filter
	Counters []counter
	AllHref  string
	Total    int
	Rows     []rowView
	Tags     []string
	States   []string
	Sorts    []string
	NoTags   bool
	Secrets  int
	ExitCode int
	Rollout  *rolloutView
	// RolloutErr is why the rollout could not be read.
	RolloutErr string
}

type rolloutView struct {
	ID, Phase, Reason, Class, Since string
	Waves                           []waveView
}

type waveView struct {
	Number, Hosts         int
	State, Verdict, Class string
	Current               bool
}

// rollout reads the rollout for the fleet page.
func (s *Server) rollout(now time.Time) (*rolloutView, string) {
	if s.o.Rollout == nil {
		return nil, ""
	}
	ro, err := s.o.Rollout()
	if err != nil {
		return nil, termsafe.Line(err.Error())
	}
	if ro == nil {
		return nil, ""
	}
	rv := &rolloutView{ID: termsafe.Line(ro.ID), Phase: termsafe.Line(ro.Phase), Reason: termsafe.Line(ro.Reason), Class: phaseClass(ro.Phase)}
	if !ro.Since.IsZero() {
		rv.Since = status.Ago(now.Sub(ro.Since))
	}
	for i, w := range ro.Waves {
		rv.Waves = append(rv.Waves, waveView{Number: w.Number, Hosts: w.Hosts, State: termsafe.Line(w.State),
			Verdict: termsafe.Line(w.Verdict), Class: phaseClass(w.State), Current: i == ro.Current})
	}
	return rv, ""
}

// phaseClass colours a rollout's or a wave's word like the states.
func phaseClass(p string) string {
	switch p {
	case "halted", "aborted":
		return "st-bad"
	case "paused", "superseded":
		return "st-silent"
	case "running", "published":
		return "st-work"
	case "done", "passed":
		return "st-ok"
	}
	return "st-off"
}

func (s *Server) fleetPage(w http.ResponseWriter, r *http.Request) { s.fleet(w, r, "fleet.html") }
func (s *Server) fleetFragment(w http.ResponseWriter, r *http.Request) {
	s.fleet(w, r, "fleet-live")
}

func (s *Server) fleet(w http.ResponseWriter, r *http.Request, tmpl string) {
	f, err := parseFilter(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	v, ok := s.snapshot(w, r)
	if !ok {
		return
	}
	s.render(w, r, v.gen, tmpl, func() any { return s.fleetView(v, f) })
}

func (s *Server) frame(v view, title, live string) Page {
	p := Page{Title: title, Live: live, Gen: v.gen, Refresh: max(5, int(s.o.Every/time.Second)), Root: s.o.Status.Root}
	if v.err != nil {
		p.Err = v.err.Error()
	}
	if v.snap != nil {
		p.Generated = v.snap.GeneratedAt.Format(time.RFC3339)
	}
	return p
}

// fleetView filters and sorts the snapshot's rows for the fleet page.
func (s *Server) fleetView(v view, f filter) fleetView {
	fv := fleetView{Page: s.frame(v, "bento fleet", "/live/fleet"+f.query("", "")), Filter: f, AllHref: "/" + f.query("state", "")}
	for _, st := range status.States {
		fv.States = append(fv.States, string(st))
	}
	fv.Sorts = []string{"state", "name", "seen", "published"}
	if v.snap == nil {
		return fv
	}
	var tagged map[string]bool
	fv.Tags, tagged, fv.NoTags = fleetTags(s.o.Status.Fleet, f.Tag)

	snap := v.snap
	fv.Rollout, fv.RolloutErr = s.rollout(snap.GeneratedAt)
	fv.Total, fv.Secrets, fv.ExitCode = snap.Summary.Total, snap.Summary.SecretErrors, snap.ExitCode
	fv.Counters = stateCounters(snap, f)
	rows := filterRows(snap.Hosts, f, tagged)
	status.SortRows(rows, f.Sort) // checked by parseFilter
	now := snap.GeneratedAt
	fv.Rows = make([]rowView, len(rows))
	for i := range rows {
		fv.Rows[i] = makeRow(&rows[i], now)
	}
	return fv
}

// fleetTags lists the fleet's tags, sorted, and the hosts that tag picks
// ("" picks none). Without the fleet's evaluation (noTags) there are no
// tags to offer.
func fleetTags(fl *fleet.Fleet, tag string) (tags []string, tagged map[string]bool, noTags bool) {
	tagged = map[string]bool{}
	if fl == nil {
		return nil, tagged, true
	}
	seen := map[string]bool{}
	for _, h := range fl.Hosts {
		for _, t := range h.Options.Tags {
			seen[t] = true
		}
	}
	if tag != "" {
		picked, _ := fleet.Select(fl.Hosts, []string{"@" + tag})
		for _, h := range picked {
			tagged[h.Name] = true
		}
	}
	for t := range seen {
		tags = append(tags, t)
	}
	slices.Sort(tags)
	return tags, tagged, false
}

// stateCounters counts the hosts in each state the snapshot has, in
// status.States order; each links to the page filtered by it.
func stateCounters(snap *status.Snapshot, f filter) []counter {
	var out []counter
	for _, st := range status.States {
		if n := snap.Summary.States[st]; n > 0 {
			out = append(out, counter{State: string(st), N: n, Class: stateClass(st),
				Href: "/" + f.query("state", string(st)), Active: f.State == string(st)})
		}
	}
	return out
}

// filterRows keeps the rows the filter's state, tag and name all match.
func filterRows(hosts []status.Row, f filter, tagged map[string]bool) []status.Row {
	rows := make([]status.Row, 0, len(hosts))
	for _, row := range hosts {
		switch {
		case f.State != "" && string(row.State) != f.State:
		case f.Tag != "" && !tagged[row.Host]:
		case !matchName(f.Q, row.Host):
		default:
			rows = append(rows, row)
		}
	}
	return rows
}

func makeRow(r *status.Row, now time.Time) rowView {
	rv := rowView{
		Host: r.Host, Href: "/host/" + url.PathEscape(r.Host),
		State: string(r.State), Class: "r-" + strings.TrimPrefix(stateClass(r.State), "st-"),
		Published: orDash(status.ShortVersion(r.PublishedVersion)),
		Applied:   orDash(status.ShortVersion(r.AppliedVersion)),
		System:    "-", Seen: "never",
		Message: termsafe.Line(r.Message), Secrets: r.HasSecretErrors(),
	}
	if r.SystemMatch != nil {
		// Only a difference is coloured: "match" is most rows.
		rv.System = "match"
		if !*r.SystemMatch {
			rv.System, rv.SystemClass = "differs", "st-drift"
		}
	}
	if r.LastSeen != nil {
		rv.Seen = status.Ago(now.Sub(*r.LastSeen))
	}
	return rv
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// field is one line of a host's details.
type field struct {
	Name, Value string
	// Class colours the value; Mono shows it as code (store paths, versions).
	Class string
	Mono  bool
}

type hostView struct {
	Page
	Host      string
	State     string
	Class     string
	Message   string
	Fields    []field
	Systems   []field
	Secrets   []field
	Health    []healthView
	Log       string
	LogName   string
	LogNote   string
	Timeline  []eventView
	NoHistory bool
	HistErr   string
}

// healthView is one run of the host's health checks: the last, and the
// one against the old system after a health rollback.
type healthView struct {
	Title, System, CheckedAt, Verdict, Class string
	Checks                                   []checkView
}

type checkView struct {
	Name, Kind, Verdict, Class, Output string
	Attempts                           int
}

func makeHealth(title string, h *manifest.Health, now time.Time) healthView {
	hv := healthView{Title: title, System: termsafe.Line(h.System), Verdict: "passed", Class: "st-ok"}
	if !h.OK {
		hv.Verdict, hv.Class = "failed", "st-bad"
	}
	if !h.CheckedAt.IsZero() {
		hv.CheckedAt = h.CheckedAt.UTC().Format(time.RFC3339) + " (" + status.Ago(now.Sub(h.CheckedAt)) + ")"
	}
	for _, c := range h.Checks {
		cv := checkView{Name: termsafe.Line(c.Name), Kind: termsafe.Line(c.Kind), Verdict: "ok", Class: "st-ok", Attempts: c.Attempts,
			Output: termsafe.String(strings.ToValidUTF8(c.Output, "\uFFFD"))}
		if !c.OK {
			cv.Verdict, cv.Class = "failed", "st-bad"
		}
		hv.Checks = append(hv.Checks, cv)
	}
	return hv
}

type eventView struct {
	At, When, Kind, Text, Class string
}

func (s *Server) hostPage(w http.ResponseWriter, r *http.Request) { s.host(w, r, "host.html") }
func (s *Server) hostFragment(w http.ResponseWriter, r *http.Request) {
	s.host(w, r, "host-live")
}

func (s *Server) host(w http.ResponseWriter, r *http.Request, tmpl string) {
	name := r.PathValue("name")
	if err := fleet.ValidateName(name); err != nil {
		http.Error(w, "no such host: "+termsafe.Line(name), http.StatusNotFound)
		return
	}
	v, ok := s.snapshot(w, r)
	if !ok {
		return
	}
	var row *status.Row
	if v.snap != nil {
		for i := range v.snap.Hosts {
			if v.snap.Hosts[i].Host == name {
				row = &v.snap.Hosts[i]
			}
		}
	}
	if row == nil {
		http.Error(w, "no host "+name+" in "+s.o.Status.Root, http.StatusNotFound)
		return
	}
	// The log and the history change with a report, so with the snapshot:
	// they are read once per snapshot too.
	s.render(w, r, v.gen, tmpl, func() any {
		hv := hostView{Page: s.frame(v, name+" · bento", "/live/host/"+url.PathEscape(name)),
			Host: name, State: string(row.State), Class: stateClass(row.State), Message: termsafe.Line(row.Message)}
		hv.Fields, hv.Systems, hv.Secrets = s.hostFields(row, v.snap.GeneratedAt)
		if row.Health != nil {
			hv.Health = append(hv.Health, makeHealth("Health checks", row.Health, v.snap.GeneratedAt))
		}
		if row.PreviousHealth != nil {
			hv.Health = append(hv.Health, makeHealth("Health checks of the system it went back to", row.PreviousHealth, v.snap.GeneratedAt))
		}
		hv.LogName, hv.Log, hv.LogNote = s.logTail(name)
		hv.Timeline, hv.NoHistory, hv.HistErr = s.timeline(r, name, v.snap.GeneratedAt)
		return hv
	})
}

// hostFields are what a host's page lists: its report's fields, its
// systems and its secrets that failed.
func (s *Server) hostFields(r *status.Row, now time.Time) (fields, systems, secrets []field) {
	return reportFields(r, now), s.systemFields(r), secretFields(r)
}

// addField appends a field to *to unless its value is empty.
func addField(to *[]field, name, value string, mono bool) {
	// Every value may be the host's: controls and escape sequences are
	// shown escaped (\x1b), html/template escapes the markup.
	if value != "" {
		*to = append(*to, field{Name: name, Value: termsafe.Line(value), Mono: mono})
	}
}

// stampField shows a time and its age at now; nothing for nil.
func stampField(t *time.Time, now time.Time) string {
	if t == nil {
		return ""
	}
	return t.UTC().Format(time.RFC3339) + " (" + status.Ago(now.Sub(*t)) + ")"
}

// reportFields are the versions and facts of the host's row.
func reportFields(r *status.Row, now time.Time) (fields []field) {
	at := func(t *time.Time) string { return stampField(t, now) }
	add := func(name, value string, mono bool) { addField(&fields, name, value, mono) }
	add("published version", r.PublishedVersion, true)
	add("published at", at(r.PublishedAt), false)
	add("applied version", r.AppliedVersion, true)
	add("attempted version", r.AttemptedVersion, true)
	add("seen version", r.SeenVersion, true)
	add("stage", r.Stage, false)
	add("result", r.Result, false)
	add("error", r.Error, false)
	add("rollback reason", r.RollbackReason, false)
	if r.Attempts > 0 {
		add("attempts", strconv.Itoa(r.Attempts), false)
	}
	add("next retry", at(r.NextRetry), false)
	last := at(r.LastSeen)
	if last == "" {
		last = "never"
	}
	add("last seen", last, false)
	add("stale after", timespan.Human(time.Duration(r.StaleAfterSeconds)*time.Second), false)
	if r.RebootRequired {
		add("reboot", "required", false)
	}
	add("reboot scheduled", at(r.RebootScheduled), false)
	add("agent version", r.AgentVersion, false)
	if r.BytesFetched > 0 {
		add("fetched", strconv.FormatInt(r.BytesFetched, 10)+" bytes", false)
	}
	add("reports/", fmt.Sprintf("%d bytes in %d files", r.ReportsBytes, r.ReportsFiles), false)
	return fields
}

// systemFields are the store paths the host runs, should run and the
// server built, and whether they match.
func (s *Server) systemFields(r *status.Row) (systems []field) {
	addField(&systems, "running (reported)", r.System, true)
	if r.InvalidSystem {
		systems = append(systems, field{Name: "running (reported)", Value: "invalid: not a store path (broken or hostile host)", Class: "st-bad"})
	}
	addField(&systems, "expected (manifest)", r.ExpectedSystem, true)
	addField(&systems, "server built", r.ServerBuilt, true)
	if b, ok := s.o.Status.Builds[r.Host]; ok {
		addField(&systems, "server's previous build", b.Previous, true)
	}
	if r.SystemMatch != nil {
		m := field{Name: "system match", Value: "match", Class: "st-ok"}
		if !*r.SystemMatch {
			m.Value, m.Class = "differs", "st-drift"
		}
		systems = append(systems, m)
	}
	return systems
}

// secretFields are the secrets the host could not install, by name.
func secretFields(r *status.Row) (secrets []field) {
	names := make([]string, 0, len(r.SecretErrors))
	for n := range r.SecretErrors {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		secrets = append(secrets, field{Name: termsafe.Line(n), Value: termsafe.Line(r.SecretErrors[n]), Class: "st-bad"})
	}
	return secrets
}

// logTail is the end of the host's latest log, sanitised: its name, its
// text and a note when it is cut or cannot be read.
func (s *Server) logTail(host string) (name, text, note string) {
	rc, f, err := logs.Open(s.o.Status.Root, host, "", maxLogRead, s.o.Status.ReportLimits)
	if err != nil {
		if errors.Is(err, logs.ErrNoLogs) {
			return "", "", "no log uploaded yet"
		}
		return "", "", termsafe.Line(err.Error())
	}
	defer rc.Close()
	t := tail{max: s.o.LogTailBytes}
	_, err = io.Copy(&t, rc)
	switch {
	case errors.Is(err, logs.ErrTooBig):
		note = fmt.Sprintf("the log decompresses to more than %d bytes: its first %d bytes end here", maxLogRead, maxLogRead)
	case err != nil:
		note = "reading the log: " + termsafe.Line(err.Error())
	}
	if t.cut {
		note = strings.TrimPrefix(note+fmt.Sprintf("; the last %d bytes", s.o.LogTailBytes), "; ")
	}
	return termsafe.Line(f.Name), termsafe.String(strings.ToValidUTF8(string(t.bytes()), "\uFFFD")), note
}

// tail keeps the last max bytes written to it.
type tail struct {
	buf []byte
	max int
	cut bool
}

func (t *tail) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
		t.cut = true
	}
	return len(p), nil
}

func (t *tail) bytes() []byte {
	if len(t.buf) > t.max {
		t.cut = true
		b := t.buf[len(t.buf)-t.max:]
		// Start on a whole line.
		if i := bytes.IndexByte(b, '\n'); i >= 0 && i < len(b)-1 {
			b = b[i+1:]
		}
		return b
	}
	return t.buf
}

func (s *Server) timeline(r *http.Request, host string, now time.Time) ([]eventView, bool, string) {
	if s.o.History == nil {
		return nil, true, ""
	}
	evs, err := s.o.History.Timeline(r.Context(), host, timelineLimit)
	if err != nil {
		return nil, false, termsafe.Line(err.Error())
	}
	out := make([]eventView, len(evs))
	for i, e := range evs {
		out[i] = eventView{At: e.At.UTC().Format(time.RFC3339), When: status.Ago(now.Sub(e.At)), Kind: e.Kind, Text: termsafe.Line(e.Text)}
		if e.State != "" {
			out[i].Class = stateClass(status.State(e.State))
		}
	}
	return out, false, ""
}

// render serves a template's output for snapshot gen.
func (s *Server) render(w http.ResponseWriter, r *http.Request, gen uint64, name string, data func() any) {
	s.serveCached(w, r, gen, "text/html; charset=utf-8", func(b *bytes.Buffer) error { return pages.ExecuteTemplate(b, name, data()) })
}
