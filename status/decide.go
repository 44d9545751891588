package status

import (
	"fmt"
	"path"
	"sort"
	"strings"
	"time"
	"unicode"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/bytesize"
	"github.com/bento-nix/bento/internal/termsafe"
	"github.com/bento-nix/bento/internal/timespan"
	"github.com/bento-nix/bento/manifest"
)

// decide turns what was read about a host into its row. It compares
// versions and store paths only; times serve only to tell how long a host
// has been silent.
func decide(in hostInput) Row {
	r := Row{Host: in.name, StaleAfterSeconds: int64(in.staleAfter / time.Second)}
	r.InFlake = inFlake(in)
	if in.manifest != nil {
		r.fromManifest(in.manifest)
	}
	if in.build != nil {
		r.ServerBuilt = in.build.OutPath
	}
	r.ReportsBytes, r.ReportsFiles = in.reports.Bytes, in.reports.Files
	r.ReportsOverLimit = in.reports.Exceeded()
	if in.report != nil {
		r.fromReport(in.report, in.storeDir, in.now)
	}
	r.SystemMatch = r.systemMatch()
	r.Progress = rowProgress(LiveProgress(in.progress, in.report, in.now))
	r.State, r.Message = judge(in, &r)
	r.Message = oneLine(withEvalError(r.Message, in.evalErr))
	return r
}

// inFlake tells whether the flake still names the host, once the fleet
// is known (nil before).
func inFlake(in hostInput) *bool {
	if !in.fleetKnown {
		return nil
	}
	inFlake := in.fleetHost != nil || in.evalErr != nil
	return &inFlake
}

// fromManifest copies what the publication says into the row.
func (r *Row) fromManifest(m *manifestInfo) {
	r.PublishedVersion = m.version
	if !m.publishedAt.IsZero() {
		t := m.publishedAt.UTC()
		r.PublishedAt = &t
	}
	r.ExpectedSystem = m.expected
}

// systemMatch tells whether the host runs the expected system, or nil
// when that says nothing.
func (r *Row) systemMatch() *bool {
	// Comparing systems says something only once the host applied the
	// published version: before, it naturally runs an older one.
	if expected := r.expected(); expected != "" && r.System != "" && r.PublishedVersion != "" && r.AppliedVersion == r.PublishedVersion {
		match := r.System == expected
		return &match
	}
	return nil
}

// rowProgress is a tick's live progress as the row shows it.
func rowProgress(p *manifest.Progress) *Progress {
	if p == nil {
		return nil
	}
	return &Progress{Stage: string(p.Stage), Version: p.Version, StartedAt: p.StartedAt.UTC(), StageStartedAt: p.StageStartedAt.UTC(), Log: p.Log}
}

// withEvalError puts a failed evaluation of the flake before msg.
func withEvalError(msg string, evalErr error) string {
	if evalErr == nil {
		return msg
	}
	return join("evaluation failed: "+oneLine(evalErr.Error()), msg)
}

// fromReport copies what the host reported into its row. A system that
// is not a store path is dropped and flagged.
func (r *Row) fromReport(rep *manifest.Report, storeDir string, now time.Time) {
	r.SeenVersion = rep.SeenVersion
	r.AppliedVersion = rep.AppliedVersion
	r.AttemptedVersion = rep.AttemptedVersion
	r.Stage = string(rep.Stage)
	r.Result = string(rep.Result)
	r.Error = rep.Error
	r.RollbackReason = rep.RollbackReason
	r.System = reportedSystem(rep)
	if r.System != "" {
		if err := CheckStorePath(storeDir, r.System); err != nil {
			// Never shown, compared or passed on: the host may have
			// named a directory it wrote for Nix to evaluate.
			r.System, r.InvalidSystem = "", true
		}
	}
	r.RebootRequired = rep.RebootRequired
	r.RebootScheduled = utc(rep.RebootScheduled)
	r.Attempts = rep.Attempts
	r.NextRetry = utc(rep.NextRetry)
	r.Log = rep.Log
	r.AgentVersion = rep.AgentVersion
	r.BytesFetched = rep.BytesFetched
	r.SecretErrors = rep.SecretErrors
	r.Server = reportedServer(rep.Server)
	r.Health, r.PreviousHealth = boundHealth(rep.Health), boundHealth(rep.PreviousHealth)
	seen := lastSeen(rep).UTC()
	r.LastSeen = &seen
	age := int64(now.Sub(seen) / time.Second)
	r.LastSeenSeconds = &age
}

// expected is the system the host should run: the one the manifest names.
// A publication made without building (deploy --no-build) names none, and
// the server's last build may be of another version, so it is no measure:
// comparing with it showed hosts that applied the publication as drifting.
func (r *Row) expected() string { return r.ExpectedSystem }

// judge decides a host's state and message: first what keeps it from
// being compared at all (the flake, unreadable files, nothing published or
// reported), then how its report's versions compare with the publication,
// then the facts any state adds, and finally whether it went silent.
func judge(in hostInput, r *Row) (State, string) {
	for _, early := range []func(hostInput, *Row) (State, string, bool){fleetState, readState, publishState} {
		if state, msg, ok := early(in, r); ok {
			return state, msg
		}
	}
	rep := in.report
	applied := rep.AppliedVersion == in.manifest.version
	state, msg := versionState(in, r)
	msg = addFacts(msg, state, rep, applied)
	if r.Progress != nil {
		// A tick under way says more than the last report's stage, and
		// the host is evidently not silent.
		live := progressMessage(r.Progress, in.now)
		if state == Pending {
			return state, live
		}
		return state, joinFacts(live, msg)
	}
	age := in.now.Sub(lastSeen(rep))
	switch {
	case age > in.staleAfter && (state == UpToDate || state == Pending || state == RebootRequired):
		return Stale, fmt.Sprintf("silent for %s (over %s); its last report said %s", Ago(age), Ago(in.staleAfter), join(string(state), msg))
	case age < -time.Minute:
		msg = join(msg, fmt.Sprintf("the host's clock is %s ahead", Ago(-age)))
	}
	return state, msg
}

// fleetState is the state of a host the flake no longer deploys.
func fleetState(in hostInput, _ *Row) (State, string, bool) {
	if h := in.fleetHost; h != nil {
		return configState(h, in.chroot)
	}
	switch {
	case !in.fleetKnown || in.evalErr != nil:
		return "", "", false
	case in.manifest == nil && in.manifestErr == nil:
		// An earlier --prune kept its reports/: --prune alone keeps them again.
		return Removed, "no longer in the flake; only its reports/ are left: bento deploy --prune --prune-reports removes them", true
	}
	return Removed, "no longer in the flake: bento deploy --prune removes its chroot", true
}

// configState is the state of a host the flake names but does not let
// bento deploy.
func configState(h *fleet.Host, chroot bool) (State, string, bool) {
	switch {
	case !h.Managed:
		return NotManaged, leftover("does not import the bento module", chroot), true
	case !h.Enable:
		return Disabled, leftover("services.bento.enable = false", chroot), true
	}
	return "", "", false
}

// readState is the state of a host whose chroot could not be read or
// holds something bento refuses.
func readState(in hostInput, r *Row) (State, string, bool) {
	switch {
	case in.manifestErr != nil:
		return Unreadable, "unreadable manifest: " + in.manifestErr.Error(), true
	case r.ReportsOverLimit:
		return Unreadable, ReportsOverLimit + ": " + in.reports.Describe(), true
	case in.reportErr != nil:
		return Unreadable, "unreadable report: " + in.reportErr.Error(), true
	case in.reportsErr != nil:
		return Unreadable, "unreadable reports: " + in.reportsErr.Error(), true
	case r.InvalidSystem:
		return Unreadable, "unreadable report: " + InvalidSystem, true
	}
	return "", "", false
}

// publishState is the state of a host with nothing published or nothing
// reported.
func publishState(in hostInput, r *Row) (State, string, bool) {
	switch {
	case in.manifest == nil:
		return Unpublished, "nothing published yet: run bento deploy", true
	case in.report != nil:
		return "", "", false
	case r.Progress != nil:
		return NeverSeen, "first tick: " + progressMessage(r.Progress, in.now), true
	case r.PublishedAt != nil && in.now.Sub(*r.PublishedAt) > in.staleAfter:
		return NeverSeen, fmt.Sprintf("no report in the %s since publication: is the host's agent set up (services.bento, its SSH key)?", Ago(in.now.Sub(*r.PublishedAt))), true
	}
	return NeverSeen, "no report yet", true
}

// versionState compares the versions the report names with the
// publication.
func versionState(in hostInput, r *Row) (State, string) {
	rep, m := in.report, in.manifest
	attempted := rep.AttemptedVersion == m.version
	switch {
	case attempted && rolledBack(rep):
		return RolledBack, rollbackMessage(rep)
	case attempted && attemptFailed(rep, m.version):
		return Failing, failureMessage(rep, in.now)
	case rep.AppliedVersion != m.version:
		return Pending, pendingMessage(rep, m, in.now)
	}
	return appliedState(in, r)
}

// appliedState is the state of a host that applied the publication.
func appliedState(in hostInput, r *Row) (State, string) {
	rep := in.report
	switch {
	case r.drifts() && rep.Result != manifest.ResultAutoUpdated:
		return Drift, fmt.Sprintf("runs %s, the server built %s (bento diff %s)", storeName(r.System), storeName(r.expected()), in.name)
	case rep.RebootRequired:
		return RebootRequired, rebootMessage(rep, in.now)
	case rep.Result == manifest.ResultAutoUpdated:
		return UpToDate, "runs its own update of the flake inputs (self-update)"
	case r.expected() == "":
		return UpToDate, "not built by the server (published with --no-build): nothing to compare its system with"
	}
	return UpToDate, ""
}

// drifts tells whether the host was compared and runs another system
// than expected.
func (r *Row) drifts() bool { return r.SystemMatch != nil && !*r.SystemMatch }

// attemptFailed tells whether the attempt of version failed, or left an
// error without applying it.
func attemptFailed(rep *manifest.Report, version string) bool {
	return failed(rep) || (rep.AppliedVersion != version && rep.Error != "")
}

func rolledBack(rep *manifest.Report) bool {
	return rep.Result == manifest.ResultRolledBack || rep.Stage == manifest.StageRolledBack
}

func failed(rep *manifest.Report) bool {
	return rep.Result == manifest.ResultFailure || rep.Stage == manifest.StageFailed
}

// addFacts adds to msg what the report says beside its state. Secrets
// first: on a narrow terminal the message is cut, and what needs action
// must stay visible. Separate facts are separated by "; " (": " introduces
// a cause).
func addFacts(msg string, state State, rep *manifest.Report, applied bool) string {
	runsIt := applied && (state == UpToDate || state == RebootRequired)
	msg = joinFacts(msg, secretsFact(rep))
	msg = joinFacts(healthFact(rep, runsIt), msg)
	if rep.Error != "" && (runsIt || applied && state == Drift) {
		// A host that runs its publication can still be in trouble (a
		// full disk, damaged state files): say what it reported.
		msg = joinFacts(msg, oneLine(reportedError(rep)))
	}
	return joinFacts(msg, fetchedFact(rep, runsIt))
}

// secretsFact names the secrets the host could not install, if any.
func secretsFact(rep *manifest.Report) string {
	if len(rep.SecretErrors) == 0 {
		return ""
	}
	return secretsMessage(rep.SecretErrors)
}

// healthFact names the failing checks of a host that runs its
// publication, if any.
func healthFact(rep *manifest.Report, runsIt bool) string {
	if !runsIt || rep.Health == nil || rep.Health.OK {
		return ""
	}
	// Reported by a continuous check on a quiet tick: the host keeps
	// its system (nothing rolls back then), the operator must act.
	return healthMessage(rep.Health)
}

// fetchedFact says how much the last update of a host that runs its
// publication fetched, if anything.
func fetchedFact(rep *manifest.Report, runsIt bool) string {
	if !runsIt || rep.BytesFetched <= 0 {
		return ""
	}
	return "last update fetched " + bytesize.Format(rep.BytesFetched)
}

// secretsMessage names the secrets a host could not install and why.
func secretsMessage(errs map[string]string) string {
	names := make([]string, 0, len(errs))
	for n := range errs {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = n + ": " + strings.TrimPrefix(errs[n], "secret "+n+": ")
	}
	word := "secret"
	if len(names) > 1 {
		word = "secrets"
	}
	return fmt.Sprintf("%d %s not installed (%s)", len(names), word, strings.Join(parts, "; "))
}

func leftover(msg string, chroot bool) string {
	if chroot {
		return msg + "; its chroot is left from before"
	}
	return msg
}

func rollbackMessage(rep *manifest.Report) string {
	why := "rolled back"
	switch rep.RollbackReason {
	case manifest.RollbackActivationFailed:
		why = "rolled back: activation failed"
	case manifest.RollbackServerUnreachable:
		why = "rolled back: server unreachable after the switch"
	case manifest.RollbackHealthCheck:
		why = "rolled back: health check failed"
		if f := rep.Health.Failing(); f != nil {
			why = "rolled back: health check " + termsafe.Line(f.Name) + " failed"
		}
		if p := rep.PreviousHealth; p != nil && !p.OK {
			why += "; the previous system fails its checks too"
		}
	case "":
	default:
		why = "rolled back: " + rep.RollbackReason
	}
	return join(why, reportedError(rep))
}

// healthMessage names the failing checks of h and the start of the
// first one's output.
func healthMessage(h *manifest.Health) string {
	var names []string
	for _, c := range h.Checks {
		if !c.OK {
			names = append(names, termsafe.Line(c.Name))
		}
	}
	msg := "unhealthy: " + strings.Join(names, ", ")
	if f := h.Failing(); f != nil {
		if out := oneLine(f.Output); out != "" {
			if len(out) > 160 {
				out = strings.ToValidUTF8(out[:157], "") + "..."
			}
			msg += " (" + termsafe.Line(out) + ")"
		}
	}
	return msg
}

// maxHealthChecks bounds the checks of a report shown: the agent runs
// at most 64.
const maxHealthChecks = 64

// boundHealth copies a host's health result within the agent's bounds:
// the report is the host's, and may say anything.
func boundHealth(h *manifest.Health) *manifest.Health {
	if h == nil {
		return nil
	}
	c := *h
	c.Checks = append([]manifest.HealthCheck(nil), h.Checks[:min(len(h.Checks), maxHealthChecks)]...)
	for i := range c.Checks {
		c.Checks[i].Name = clipText(c.Checks[i].Name, 64)
		c.Checks[i].Kind = clipText(c.Checks[i].Kind, 16)
		c.Checks[i].Output = clipText(c.Checks[i].Output, manifest.MaxHealthOutput)
	}
	c.System = clipText(c.System, 4096)
	return &c
}

func clipText(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	s = s[:n]
	return strings.ToValidUTF8(s, "")
}

// reportedError is the host's error as a row shows it: the summary
// without command lines where the agent sent one (the JSON error field
// keeps the whole error), else the error itself.
func reportedError(rep *manifest.Report) string {
	if rep.Summary != "" {
		return rep.Summary
	}
	return rep.Error
}

func failureMessage(rep *manifest.Report, now time.Time) string {
	msg := reportedError(rep)
	if msg == "" {
		msg = fmt.Sprintf("failed at stage %s", orDash(string(rep.Stage)))
	}
	var extra []string
	if rep.Attempts > 1 {
		extra = append(extra, fmt.Sprintf("attempt %d", rep.Attempts))
	}
	if rep.NextRetry != nil {
		if d := rep.NextRetry.Sub(now); d > 0 {
			extra = append(extra, "retry in "+Ago(d))
		} else {
			extra = append(extra, "retry due")
		}
	}
	if len(extra) > 0 {
		msg = oneLine(msg) + " (" + strings.Join(extra, ", ") + ")"
	}
	return msg
}

func pendingMessage(rep *manifest.Report, m *manifestInfo, now time.Time) string {
	var msg string
	switch {
	case rep.AttemptedVersion == m.version && rep.Result == "":
		msg = "updating: " + orDash(string(rep.Stage))
	case rep.AttemptedVersion == m.version:
		msg = "attempted, not applied yet"
	case rep.SeenVersion == m.version:
		msg = "seen, not applied yet"
	default:
		msg = "not seen yet"
	}
	if !m.publishedAt.IsZero() {
		msg += fmt.Sprintf(" (published %s ago)", Ago(now.Sub(m.publishedAt)))
	}
	if rep.AttemptedVersion != m.version && rep.AttemptedVersion != "" && rep.Result == manifest.ResultFailure {
		msg = join(msg, fmt.Sprintf("version %s had failed: %s", ShortVersion(rep.AttemptedVersion), orDash(reportedError(rep))))
	}
	return msg
}

func rebootMessage(rep *manifest.Report, now time.Time) string {
	if rep.RebootScheduled != nil {
		if d := rep.RebootScheduled.Sub(now); d > 0 {
			return "reboot scheduled in " + Ago(d)
		}
		return "reboot was scheduled " + Ago(now.Sub(*rep.RebootScheduled)) + " ago"
	}
	return "a new kernel, initrd or modules wait for a reboot"
}

// reportedSystem is what the host runs, or for operation boot what it
// will boot: the system to compare with the server's build.
func reportedSystem(r *manifest.Report) string {
	if r.Operation == "boot" && r.ActualToplevel != "" {
		return r.ActualToplevel
	}
	if r.CurrentSystem != "" {
		return r.CurrentSystem
	}
	return r.ActualToplevel
}

// lastSeen is when the host last reported, by the host's clock.
func lastSeen(r *manifest.Report) time.Time {
	if !r.FinishedAt.IsZero() {
		return r.FinishedAt
	}
	return r.StartedAt
}

func utc(t *time.Time) *time.Time {
	if t == nil || t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

// ShortVersion is the first 8 characters of a version, as shown in tables.
func ShortVersion(v string) string {
	v = oneLine(v)
	if r := []rune(v); len(r) > 8 {
		return string(r[:8])
	}
	return v
}

// Ago renders an age or a delay as every duration is shown
// (timespan.Human): 45s, 3m05s, 2h05m, 4d07h; 0s under a second or
// when negative.
func Ago(d time.Duration) string {
	// An age needs no milliseconds: "seen 195ms ago" is noise, and the
	// host's clock is not that exact anyway.
	if d < time.Second {
		return "0s"
	}
	return timespan.Human(d)
}

// storeName shortens a store path to its hash prefix and name:
// /nix/store/abcdefgh…-nixos-system-x → abcdefgh-nixos-system-x.
func storeName(p string) string {
	base := path.Base(p)
	if i := strings.IndexByte(base, '-'); i == 32 {
		return base[:8] + base[i:]
	}
	return base
}

func join(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + ": " + b
}

// joinFacts joins two independent parts of a message.
func joinFacts(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "; " + b
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine makes text from a report safe for a terminal and a table cell:
// what termsafe finds unsafe (controls, escape sequences, bidi and other
// format characters) and every space or newline become one space.
func oneLine(s string) string {
	var b strings.Builder
	space := false
	for _, r := range s {
		if termsafe.Unsafe(r) || unicode.IsSpace(r) {
			space = b.Len() > 0
			continue
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		b.WriteRune(r)
	}
	return b.String()
}

// reportedServer is the server a report names, when it looks like one
// ("host:port", at most 262 bytes): the host wrote it.
func reportedServer(s string) string {
	if len(s) > 262 {
		return ""
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune(".-:[]_%", c)) {
			return ""
		}
	}
	return s
}
