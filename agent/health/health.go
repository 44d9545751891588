// Package health runs a host's health checks (services.bento.healthChecks):
// a systemd unit that must be active, a command that must exit 0, an HTTP
// GET that must answer a given status. The agent runs them after a switch,
// before it confirms it, and rolls back when one fails; checks marked
// continuous also run on quiet ticks, for the report only.
//
// Every attempt is bounded: a command or the unit query runs in its own
// process group under a timeout (SIGTERM, then SIGKILL after a grace
// period), an HTTP request under the same timeout with a bounded body. A
// check that hangs therefore costs at most
// settle + attempts × (timeout + grace) + retries × interval.
package health

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/bento-nix/bento/internal/proc"
	"github.com/bento-nix/bento/internal/timespan"
	"github.com/bento-nix/bento/manifest"
)

// Check is one health check. Exactly one of Unit, Command and HTTP is set.
type Check struct {
	Name string
	// Unit is a systemd unit that must be active.
	Unit string
	// Command must exit 0; it runs as User (root when empty).
	Command []string
	User    string
	HTTP    *HTTP
	// Timeout bounds one attempt.
	Timeout time.Duration
	// Retries is how many more attempts a failed one gets, Interval
	// apart.
	Retries  int
	Interval time.Duration
	// Settle is the wait after a switch before the first attempt.
	Settle time.Duration
	// Continuous checks also run on ticks that apply nothing.
	Continuous bool
}

// HTTP is a GET that must answer ExpectStatus.
type HTTP struct {
	URL          string
	ExpectStatus int
}

// Kind is the check's kind, as a report names it.
func (c Check) Kind() string {
	switch {
	case c.Unit != "":
		return manifest.HealthUnit
	case len(c.Command) > 0:
		return manifest.HealthCommand
	case c.HTTP != nil:
		return manifest.HealthHTTP
	}
	return ""
}

// Limits of a check's settings: a check bounds a switch's confirmation,
// so none may hold it for hours.
const (
	MaxTimeout  = 10 * time.Minute
	MaxInterval = 10 * time.Minute
	MaxSettle   = 30 * time.Minute
	MaxRetries  = 100
)

// Validate says what is wrong with c, naming it.
func (c Check) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("healthChecks.%s: "+format, append([]any{c.Name}, args...)...))
	}
	c.validateKind(bad)
	c.validateLimits(bad)
	return errors.Join(errs...)
}

// validateKind checks the one kind c must be (unit, command or http) and
// that kind's own settings.
func (c Check) validateKind(bad func(format string, args ...any)) {
	kinds := 0
	if c.Unit != "" {
		kinds++
		if strings.HasPrefix(c.Unit, "-") || strings.ContainsAny(c.Unit, " \t\n/\\\x00") {
			bad("unit %q is not a unit name (such as \"nginx.service\")", c.Unit)
		}
	}
	if len(c.Command) > 0 {
		kinds++
		if c.Command[0] == "" {
			bad("command: the program is empty")
		}
	}
	if c.HTTP != nil {
		kinds++
		c.HTTP.validate(bad)
	}
	if kinds != 1 {
		bad("set exactly one of unit, command and http (%d set)", kinds)
	}
	if c.User != "" && len(c.Command) == 0 {
		bad("user is only for command checks")
	}
}

func (h *HTTP) validate(bad func(format string, args ...any)) {
	u, err := url.Parse(h.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("http.url %q is not an http:// or https:// URL", h.URL)
	}
	if h.ExpectStatus < 100 || h.ExpectStatus > 599 {
		bad("http.expectStatus %d is not an HTTP status (100-599)", h.ExpectStatus)
	}
}

// validateLimits keeps c's timing within what a switch's confirmation
// can wait for.
func (c Check) validateLimits(bad func(format string, args ...any)) {
	for _, d := range []struct {
		name     string
		v        time.Duration
		min, max time.Duration
	}{
		{"timeout", c.Timeout, time.Millisecond, MaxTimeout},
		{"interval", c.Interval, 0, MaxInterval},
		{"settle", c.Settle, 0, MaxSettle},
	} {
		if d.v < d.min || d.v > d.max {
			bad("%s %s is out of range: it must be from %s to %s", d.name, timespan.Format(d.v), timespan.Format(d.min), timespan.Format(d.max))
		}
	}
	if c.Retries < 0 || c.Retries > MaxRetries {
		bad("retries %d is out of range: it must be from 0 to %d", c.Retries, MaxRetries)
	}
}

// Budget is the longest c can take, given the grace a stopped process
// gets: what a caller waiting for it must allow.
func (c Check) Budget(grace time.Duration) time.Duration {
	n := time.Duration(c.Retries + 1)
	return c.Settle + n*(c.Timeout+grace) + time.Duration(c.Retries)*c.Interval
}

// DefaultUnitCommand asks systemd whether a unit is active (exit 0 only
// then); the unit's name is appended.
func DefaultUnitCommand() []string { return []string{"systemctl", "is-active"} }

// DefaultGrace is the time a timed-out command gets between SIGTERM and
// SIGKILL.
const DefaultGrace = 5 * time.Second

// maxBody bounds what is read of an HTTP answer.
const maxBody = 64 << 10

// maxRedirects bounds the redirects an HTTP check follows (to the same
// host only).
const maxRedirects = 3

// Runner runs checks.
type Runner struct {
	// UnitCommand is run with the unit's name appended; DefaultUnitCommand
	// when empty.
	UnitCommand []string
	// Env is added to the environment of commands.
	Env []string
	// Grace is the time between SIGTERM and SIGKILL for a timed-out
	// command; DefaultGrace when zero.
	Grace time.Duration
	// Log receives one line per attempt that fails and per result.
	Log io.Writer
	// Now is the clock for CheckedAt; time.Now when nil.
	Now func() time.Time

	mu sync.Mutex
}

func (r *Runner) unitCommand() []string {
	if len(r.UnitCommand) == 0 {
		return DefaultUnitCommand()
	}
	return r.UnitCommand
}

func (r *Runner) logf(format string, args ...any) {
	if r.Log == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.Log, "bento: "+format+"\n", args...)
}

// Run runs checks (all at once, each on its own) against system, the
// system now running, and returns their results sorted by name. settle
// applies each check's Settle first (after a switch; not on a quiet
// tick). A ctx that ends stops what runs and fails what is left.
func (r *Runner) Run(ctx context.Context, system string, checks []Check, settle bool) *manifest.Health {
	results := make([]manifest.HealthCheck, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = r.runOne(ctx, c, settle)
		}()
	}
	wg.Wait()
	sort.Slice(results, func(i, j int) bool { return results[i].Name < results[j].Name })
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	h := &manifest.Health{System: system, CheckedAt: now().UTC(), OK: true, Checks: results}
	for _, c := range results {
		h.OK = h.OK && c.OK
	}
	return h
}

func (r *Runner) runOne(ctx context.Context, c Check, settle bool) manifest.HealthCheck {
	res := manifest.HealthCheck{Name: c.Name, Kind: c.Kind()}
	if err := c.Validate(); err != nil {
		res.Output = Clip(err.Error())
		r.logf("health check %s: %v", c.Name, err)
		return res
	}
	if settle && c.Settle > 0 {
		r.logf("health check %s: waiting %s for the system to settle", c.Name, c.Settle)
		if !wait(ctx, c.Settle) {
			res.Output = Clip(fmt.Sprintf("stopped before the first attempt: %v", ctx.Err()))
			return res
		}
	}
	attempts := c.Retries + 1
	for n := 1; n <= attempts; n++ {
		res.Attempts = n
		out, err := r.attempt(ctx, c)
		if err == nil {
			res.OK, res.Output = true, Clip(out)
			r.logf("health check %s (%s): passed (attempt %d of %d)", c.Name, res.Kind, n, attempts)
			return res
		}
		res.Output = joinOutput(err.Error(), out)
		r.logf("health check %s (%s): attempt %d of %d failed: %s", c.Name, res.Kind, n, attempts, oneLine(res.Output))
		if n == attempts || !wait(ctx, c.Interval) {
			break
		}
	}
	return res
}

// wait waits d, or less when ctx ends first (then false).
func wait(ctx context.Context, d time.Duration) bool {
	if ctx.Err() != nil {
		return false
	}
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (r *Runner) attempt(ctx context.Context, c Check) (string, error) {
	actx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	var (
		out string
		err error
	)
	switch c.Kind() {
	case manifest.HealthUnit:
		argv := append(append([]string(nil), r.unitCommand()...), c.Unit)
		out, err = r.command(actx, argv, nil, nil)
	case manifest.HealthCommand:
		var (
			cred *syscall.Credential
			env  []string
		)
		cred, env, err = credential(c.User)
		if err == nil {
			out, err = r.command(actx, c.Command, cred, env)
		}
	case manifest.HealthHTTP:
		out, err = get(actx, *c.HTTP)
	}
	if err != nil && actx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
		err = fmt.Errorf("timed out after %s: %w", c.Timeout, err)
	}
	return out, err
}

func (r *Runner) command(ctx context.Context, argv []string, cred *syscall.Credential, env []string) (string, error) {
	res, err := proc.Run(ctx, proc.Cmd{
		Argv:       argv,
		Dir:        "/",
		Env:        append(append([]string(nil), r.Env...), env...),
		Combined:   true,
		TailBytes:  manifest.MaxHealthOutput,
		Grace:      cmp.Or(r.Grace, DefaultGrace),
		Credential: cred,
		// Killed with the agent: a check outliving it would hang on,
		// unbounded (the next start rolls back anyway).
		KillWithParent: true,
	})
	var pe *proc.Error
	if errors.As(err, &pe) {
		// The output is quoted on its own; the error says how it ended.
		msg := proc.Quote(argv)
		if len(msg) > 80 {
			// A script's text says less than the check's name does.
			msg = filepath.Base(argv[0])
		}
		if pe.ExitCode >= 0 {
			msg += " exited with status " + strconv.Itoa(pe.ExitCode)
		} else {
			msg += ": " + pe.Err.Error()
		}
		return res.Tail, errors.New(msg)
	}
	return res.Tail, err
}

// credential is who a command check runs as: nil (the agent itself) for
// root or no user, else that user with its groups, and the environment
// that names it (HOME, USER, LOGNAME). An agent that is not root cannot
// become another user, and says so.
func credential(name string) (*syscall.Credential, []string, error) {
	if name == "" || name == "root" {
		return nil, nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, nil, fmt.Errorf("user %q: %w", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, nil, fmt.Errorf("user %q has no numeric uid/gid (%s/%s)", name, u.Uid, u.Gid)
	}
	env := []string{"HOME=" + u.HomeDir, "USER=" + name, "LOGNAME=" + name}
	if me := syscall.Geteuid(); me != 0 {
		if uint64(me) == uid {
			return nil, env, nil
		}
		return nil, nil, fmt.Errorf("cannot run as user %q: the agent is not root (uid %d)", name, me)
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groupIDs(u)}
	return cred, env, nil
}

// groupIDs are the numeric ids of u's groups (nil when none can be read).
func groupIDs(u *user.User) []uint32 {
	ids, err := u.GroupIds()
	if err != nil {
		return nil
	}
	var groups []uint32
	for _, g := range ids {
		if n, err := strconv.ParseUint(g, 10, 32); err == nil {
			groups = append(groups, uint32(n))
		}
	}
	return groups
}

// get runs an HTTP check: a GET without proxy, following at most
// maxRedirects redirects and only to the same host, reading a bounded
// body.
func get(ctx context.Context, h HTTP) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.URL, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("User-Agent", "bento-health-check")
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport: tr,
		CheckRedirect: func(next *http.Request, via []*http.Request) error {
			if len(via) > maxRedirects {
				return fmt.Errorf("more than %d redirects", maxRedirects)
			}
			if next.URL.Host != via[0].URL.Host {
				return fmt.Errorf("redirected to another host (%s): not followed", next.URL.Host)
			}
			return nil
		},
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", h.URL, err)
	}
	defer resp.Body.Close()
	// A read cut short (by the timeout) still leaves the status, which
	// is what decides.
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	out := fmt.Sprintf("HTTP %s", resp.Status)
	if len(body) > 0 {
		out += "\n" + string(body)
	}
	if resp.StatusCode != h.ExpectStatus {
		return out, fmt.Errorf("GET %s answered %d, want %d", h.URL, resp.StatusCode, h.ExpectStatus)
	}
	return out, nil
}

// joinOutput is why an attempt failed, then as much of the end of its
// output as fits in manifest.MaxHealthOutput.
func joinOutput(msg, out string) string {
	msg = Clip(msg)
	out = strings.TrimSpace(out)
	if out == "" {
		return msg
	}
	room := manifest.MaxHealthOutput - len(msg) - 2
	if room < 64 {
		return msg
	}
	return msg + ":\n" + clipTo(out, room)
}

// Clip keeps the end of s within manifest.MaxHealthOutput bytes, as valid
// UTF-8 without terminal escapes: the part of a long output that says why.
func Clip(s string) string { return clipTo(s, manifest.MaxHealthOutput) }

func clipTo(s string, n int) string {
	s = proc.StripANSI(strings.ToValidUTF8(s, "\uFFFD"))
	if len(s) <= n {
		return s
	}
	const mark = "…"
	s = s[len(s)-(n-len(mark)):]
	for len(s) > 0 && !utf8.RuneStart(s[0]) {
		s = s[1:]
	}
	return mark + s
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:297] + "..."
	}
	return s
}
