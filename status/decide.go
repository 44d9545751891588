package status

import (
	"fmt"
	"path"
	"sort"
	"strings"
	"time"
	"unicode"

	"github.com/bento-nix/bento/internal/bytesize"
	"github.com/bento-nix/bento/internal/termsafe"
	"github.com/bento-nix/bento/manifest"
)

// decide turns what was read about a host into its row. It compares
// versions and store paths only; times serve only to tell how long a host
// has been silent.
func decide(in hostInput) Row {
	r := Row{Host: in.name, StaleAfterSeconds: int64(in.staleAfter / time.Second)}
	if in.fleetKnown {
		inFlake := in.fleetHost != nil || in.evalErr != nil
		r.InFlake = &inFlake
	}
	if m := in.manifest; m != nil {
		r.PublishedVersion = m.version
		if !m.publishedAt.IsZero() {
			t := m.publishedAt.UTC()
			r.PublishedAt = &t
		}
		r.ExpectedSystem = m.expected
	}
	if in.build != nil {
		r.ServerBuilt = in.build.OutPath
	}
	r.ReportsBytes, r.ReportsFiles = in.reports.Bytes, in.reports.Files
	r.ReportsOverLimit = in.reports.Exceeded()
	if rep := in.report; rep != nil {
		r.SeenVersion = rep.SeenVersion
		r.AppliedVersion = rep.AppliedVersion
		r.AttemptedVersion = rep.AttemptedVersion
		r.Stage = string(rep.Stage)
		r.Result = string(rep.Result)
		r.Error = rep.Error
		r.RollbackReason = rep.RollbackReason
		r.System = reportedSystem(rep)
		if r.System != "" {
			if err := CheckStorePath(in.storeDir, r.System); err != nil {
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
		seen := lastSeen(rep).UTC()
		r.LastSeen = &seen
		age := int64(in.now.Sub(seen) / time.Second)
		r.LastSeenSeconds = &age
	}
	// Comparing systems says something only once the host applied the
	// published version: before, it naturally runs an older one.
	if expected := r.expected(); expected != "" && r.System != "" && r.PublishedVersion != "" && r.AppliedVersion == r.PublishedVersion {
		match := r.System == expected
		r.SystemMatch = &match
	}
	r.State, r.Message = judge(in, &r)
	if in.evalErr != nil {
		r.Message = join("evaluation failed: "+oneLine(in.evalErr.Error()), r.Message)
	}
	r.Message = oneLine(r.Message)
	return r
}

// expected is the system the host should run: the manifest's, else the
// server's last build (a publication made without building).
func (r *Row) expected() string {
	if r.ExpectedSystem != "" {
		return r.ExpectedSystem
	}
	return r.ServerBuilt
}

func judge(in hostInput, r *Row) (State, string) {
	h, m, rep := in.fleetHost, in.manifest, in.report
	switch {
	case in.fleetKnown && h == nil && in.evalErr == nil:
		return Removed, "no longer in the flake: bento deploy --prune removes its chroot"
	case h != nil && !h.Managed:
		return NotManaged, leftover("does not import the bento module", in.chroot)
	case h != nil && !h.Enable:
		return Disabled, leftover("services.bento.enable = false", in.chroot)
	case in.manifestErr != nil:
		return Unreadable, "unreadable manifest: " + in.manifestErr.Error()
	case r.ReportsOverLimit:
		return Unreadable, ReportsOverLimit + ": " + in.reports.Describe()
	case in.reportErr != nil:
		return Unreadable, "unreadable report: " + in.reportErr.Error()
	case in.reportsErr != nil:
		return Unreadable, "unreadable reports: " + in.reportsErr.Error()
	case r.InvalidSystem:
		return Unreadable, "unreadable report: " + InvalidSystem
	case m == nil:
		return Unpublished, "nothing published yet: run bento deploy"
	case rep == nil:
		if r.PublishedAt != nil {
			if age := in.now.Sub(*r.PublishedAt); age > in.staleAfter {
				return NeverSeen, fmt.Sprintf("no report in the %s since publication: is the host's agent set up (services.bento, its SSH key)?", Ago(age))
			}
		}
		return NeverSeen, "no report yet"
	}

	published := m.version
	applied := rep.AppliedVersion == published
	attempted := rep.AttemptedVersion == published
	var state State
	var msg string
	switch {
	case attempted && (rep.Result == manifest.ResultRolledBack || rep.Stage == manifest.StageRolledBack):
		state, msg = RolledBack, rollbackMessage(rep)
	case attempted && (rep.Result == manifest.ResultFailure || rep.Stage == manifest.StageFailed || (!applied && rep.Error != "")):
		state, msg = Failing, failureMessage(rep, in.now)
	case !applied:
		state, msg = Pending, pendingMessage(rep, m, in.now)
	case r.SystemMatch != nil && !*r.SystemMatch && rep.Result != manifest.ResultAutoUpdated:
		state = Drift
		msg = fmt.Sprintf("runs %s, the server built %s (bento diff %s)", storeName(r.System), storeName(r.expected()), in.name)
	case rep.RebootRequired:
		state, msg = RebootRequired, rebootMessage(rep, in.now)
	default:
		state = UpToDate
		if rep.Result == manifest.ResultAutoUpdated {
			msg = "runs its own update of the flake inputs (self-update)"
		}
	}
	// Secrets first: on a narrow terminal the message is cut, and what
	// needs action must stay visible.
	// Separate facts are separated by "; " (": " introduces a cause).
	if len(rep.SecretErrors) > 0 {
		msg = joinFacts(msg, secretsMessage(rep.SecretErrors))
	}
	if applied && rep.Error != "" && (state == UpToDate || state == RebootRequired || state == Drift) {
		// A host that runs its publication can still be in trouble (a
		// full disk, damaged state files): say what it reported.
		msg = joinFacts(msg, oneLine(shortError(rep.Error)))
	}
	if applied && rep.BytesFetched > 0 && (state == UpToDate || state == RebootRequired) {
		msg = joinFacts(msg, "last update fetched "+bytesize.Format(rep.BytesFetched))
	}
	if age := in.now.Sub(lastSeen(rep)); age > in.staleAfter && (state == UpToDate || state == Pending || state == RebootRequired) {
		return Stale, fmt.Sprintf("silent for %s (over %s); its last report said %s", Ago(age), Ago(in.staleAfter), join(string(state), msg))
	} else if age < -time.Minute {
		msg = join(msg, fmt.Sprintf("the host's clock is %s ahead", Ago(-age)))
	}
	return state, msg
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
	case "":
	default:
		why = "rolled back: " + rep.RollbackReason
	}
	return join(why, shortError(rep.Error))
}

// shortError drops the command line Nix errors are quoted with ("build:
// nix build --no-link … path:/…#…: error: builder for … failed"): the
// stage and Nix's own message are what a table row has room for. The JSON
// error field keeps it whole.
func shortError(s string) string {
	i := strings.Index(s, "error: ")
	if i <= 0 {
		return s
	}
	stage, _, ok := strings.Cut(s[:i], ":")
	if ok && stage != "" && !strings.ContainsAny(stage, " /") {
		return stage + ": " + s[i:]
	}
	return s[i:]
}

func failureMessage(rep *manifest.Report, now time.Time) string {
	msg := shortError(rep.Error)
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
		msg = join(msg, fmt.Sprintf("version %s had failed: %s", ShortVersion(rep.AttemptedVersion), orDash(rep.Error)))
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
