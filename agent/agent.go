// Package agent is the client half of bento: one tick connects to the
// server over SSH/SFTP, reads the host's manifest, and when a new
// publication is there downloads what changed, builds (or fetches) the
// host's system, switches to it with a guard that rolls back, and reports.
//
// A tick is safe to kill at any point: the state directory is written with
// temp files and renames, the lock is an flock, reports wait in a local
// queue until the server has them, and an attempt that was interrupted is
// taken up again by the next tick.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bento-nix/bento/activate"
	"github.com/bento-nix/bento/agent/backoff"
	"github.com/bento-nix/bento/agent/queue"
	"github.com/bento-nix/bento/agent/transport"
	"github.com/bento-nix/bento/agent/tree"
	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/internal/statefile"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
	"github.com/bento-nix/bento/secrets"
)

// Options are what a tick needs beyond the configuration.
type Options struct {
	// Out receives the tick's progress and the live build and switch
	// output (the terminal, or a trigger connection); nil discards.
	Out io.Writer
	// Nix runs nix, nix-store and nix-env.
	Nix *nix.Runner
	// AgentVersion goes into every report.
	AgentVersion string
	// LockWait bounds the wait for another tick's lock; 0 waits as long
	// as ctx allows, and a negative one does not wait.
	LockWait time.Duration
	// Dial replaces the TCP dialer (benchmarks count bytes with it).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Rand spreads reboot times; a random seed when nil.
	Rand *rand.Rand
	// Bundle, when set, is an offline bundle's directory (bento export)
	// that the tick reads instead of connecting to the server, and
	// ReportDir where its report goes (default: the bundle's reports/).
	Bundle, ReportDir string
	// RetryNow ignores, for this tick, the retry delay of a version whose
	// last attempt failed ("bento agent run --now", after fixing what made
	// it fail on the host).
	RetryNow bool
	// NoProgress uploads no live progress (reports/progress.json and the
	// growing log) during the tick: measurements compare with it.
	NoProgress bool
}

// Outcome says what a tick did.
type Outcome struct {
	// Action is "up-to-date", "applied", "failed", "rolled-back",
	// "waiting-retry", "auto-updated" or "unpublished".
	Action string
	// Report is the report written this tick, if any.
	Report *manifest.Report
	// Fetched is the number of tree objects (distinct file contents)
	// downloaded.
	Fetched int
	// ProgressUploads counts the live progress records uploaded this
	// tick (measurements of what live progress costs use it).
	ProgressUploads int
	// Rebooted is true when the reboot command ran.
	Rebooted bool
}

// Actions of Outcome.
const (
	ActionUpToDate    = "up-to-date"
	ActionApplied     = "applied"
	ActionFailed      = "failed"
	ActionRolledBack  = "rolled-back"
	ActionWaiting     = "waiting-retry"
	ActionAutoUpdated = "auto-updated"
	ActionUnpublished = "unpublished"
)

// ErrQueued is returned (wrapped) when the tick's report could not be
// delivered and waits in the local queue for the next tick.
var ErrQueued = errors.New("report queued")

// Run runs one tick. The error is non-nil when the host is not where the
// publication wants it (an attempt failed or rolled back, a failed version
// waits for its retry) or the server could not be reached; the Outcome
// says what happened either way.
func Run(ctx context.Context, cfg Config, o Options) (Outcome, error) {
	endpoints, err := completeConfig(&cfg)
	if err != nil {
		return Outcome{}, err
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	pubKeys, err := cfg.PublicationKeys()
	if err != nil {
		return Outcome{}, &ConfigError{err}
	}
	signer, local, err := openChroot(cfg, o, pubKeys)
	if err != nil {
		return Outcome{}, err
	}
	if local != nil {
		defer local.Close()
	}
	policy, err := activate.ParsePolicy(cfg.Reboot.Policy, cfg.Reboot.Window)
	if err != nil {
		return Outcome{}, &ConfigError{err}
	}
	o.setDefaults()
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return Outcome{}, fmt.Errorf("state directory: %w", err)
	}
	lk, err := acquireLock(ctx, cfg.StateDir, o.LockWait, o.Out)
	if err != nil {
		return Outcome{}, err
	}
	defer lk.release()

	t := &tick{
		cfg:       cfg,
		o:         o,
		endpoints: orderServers(endpoints, cfg.ServerOrder, lastServer(cfg.StateDir)),
		signer:    signer,
		policy:    policy,
		pubKeys:   pubKeys,
		local:     local,
		retry:     cfg.retryPolicy(),
		store:     &tree.Store{Dir: filepath.Join(cfg.StateDir, treesDir), Objects: filepath.Join(cfg.StateDir, objectsDir)},
		queue:     &queue.Queue{Dir: filepath.Join(cfg.StateDir, queueDir)},
		log:       slog.New(newLineHandler(o.Out)),
	}
	defer t.closeConn()
	// An attempt cut short by a signal ends its uploads here.
	defer func() { t.progress.finish() }()
	out, err := t.run(ctx)
	if err != nil {
		err = fmt.Errorf("host %s: %w", cfg.Host, err)
	}
	return out, err
}

// completeConfig completes and validates cfg, and returns its servers
// ready to dial.
func completeConfig(cfg *Config) ([]transport.Endpoint, error) {
	if err := cfg.Complete(); err != nil {
		return nil, &ConfigError{err}
	}
	if err := cfg.Validate(); err != nil {
		return nil, &ConfigError{err}
	}
	endpoints, err := cfg.Endpoints()
	if err != nil {
		return nil, &ConfigError{err}
	}
	return endpoints, nil
}

// retryPolicy is the backoff of a version whose attempt failed.
func (c *Config) retryPolicy() backoff.Policy {
	return backoff.Policy{Initial: time.Duration(c.Retry.InitialDelay), Max: time.Duration(c.Retry.MaxDelay)}
}

// openChroot prepares what a tick reads: the offline bundle's directory
// (local), or the SSH key that logs in to the servers (signer).
func openChroot(cfg Config, o Options, pubKeys []manifest.PublicationKey) (ssh.Signer, *transport.Local, error) {
	if o.Bundle != "" {
		if len(pubKeys) == 0 {
			// Over SFTP the pinned server host key vouches for what is
			// read; a directory has nothing of the kind but the
			// publication's own signature.
			return nil, nil, &ConfigError{errors.New("apply-bundle needs services.bento.publicationKey (--publication-key): nothing else vouches for a bundle, whoever handed it over")}
		}
		// Offline: the bundle is the chroot; nothing logs in anywhere.
		local, err := transport.OpenLocal(o.Bundle, o.ReportDir)
		if err != nil {
			return nil, nil, err
		}
		return nil, local, nil
	}
	warning, err := cfg.CheckIdentityFile()
	if err != nil {
		return nil, nil, err
	}
	if warning != "" {
		fmt.Fprintf(o.Out, "bento: warning: %s\n", warning)
	}
	signer, err := transport.LoadSigner(cfg.IdentityFile)
	if err != nil {
		return nil, nil, &ConfigError{err}
	}
	return signer, nil, nil
}

// setDefaults fills in the runner, clock and randomness left unset.
func (o *Options) setDefaults() {
	if o.Nix == nil {
		o.Nix = &nix.Runner{}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
}

type tick struct {
	cfg Config
	o   Options
	// endpoints are the servers to try, in the order of this tick.
	endpoints []transport.Endpoint
	signer    ssh.Signer
	policy    activate.Policy
	// pubKeys are the configured publication keys; pins adds the keys
	// the state pinned through a rotation (signing.go).
	pubKeys []manifest.PublicationKey
	pins    []manifest.PublicationKey
	retry   backoff.Policy
	store   *tree.Store
	queue   *queue.Queue
	log     *slog.Logger

	// local, when set, is the offline bundle every connection opens.
	local *transport.Local

	mu   sync.Mutex
	conn remote
	// fetched counts the tree objects downloaded this tick.
	fetched int
	// secretsBefore is what installing secrets before the switch did.
	secretsBefore *secrets.Outcome
	// notes are damaged state files moved aside this tick: they go into
	// the tick's report once (the next tick no longer finds the file).
	notes []string
	// progress uploads the attempt's stages and log as they happen.
	progress *liveProgress
}

// note records a damaged state file moved aside, for the report.
func (t *tick) note(n string) {
	if n == "" {
		return
	}
	t.log.Warn(n)
	t.notes = append(t.notes, n)
}

// withNotes adds the tick's notes to a report's error.
func (t *tick) withNotes(msg string) string {
	if len(t.notes) == 0 {
		return msg
	}
	n := "damaged state: " + strings.Join(t.notes, "; ")
	if msg == "" {
		return n
	}
	return msg + "; " + n
}

func (t *tick) say(format string, args ...any) {
	fmt.Fprintf(t.o.Out, "bento: "+format+"\n", args...)
}

func (t *tick) transportOptions(attempts int) transport.Options {
	return transport.Options{
		Signer:         t.signer,
		ConnectTimeout: time.Duration(t.cfg.ConnectTimeout),
		OpTimeout:      time.Duration(t.cfg.OperationTimeout),
		Attempts:       attempts,
		Backoff:        backoff.Policy{Initial: time.Second, Max: 30 * time.Second},
		Dial:           t.o.Dial,
		Logger:         t.log,
		PostQuantum:    t.cfg.PostQuantum,
	}
}

// connect (re)opens the tick's connection, to the first of the servers
// that answers.
func (t *tick) connect(ctx context.Context, attempts int) error {
	if t.local != nil {
		t.setConn(t.local)
		return nil
	}
	c, err := t.dial(ctx, attempts)
	if err != nil {
		return err
	}
	t.setConn(c)
	return nil
}

// dial connects to one of the servers (see transport.DialAny) and
// remembers which one answered, for the next tick's order.
func (t *tick) dial(ctx context.Context, attempts int) (*transport.Conn, error) {
	c, _, err := transport.DialAny(ctx, t.transportOptions(attempts), t.endpoints)
	if err != nil {
		return nil, err
	}
	if len(t.endpoints) > 1 {
		if c.Addr() != t.endpoints[0].Addr {
			t.say("server %s did not answer: using %s", t.endpoints[0].Addr, c.Addr())
		}
		setLastServer(t.cfg.StateDir, c.Addr())
	}
	return c, nil
}

// remote is the chroot a tick reads and writes: a *transport.Conn over
// SFTP, or the *transport.Local of an offline bundle.
type remote interface {
	tree.Fetcher
	Stat(ctx context.Context, p string) (os.FileInfo, error)
	ReadFile(ctx context.Context, p string, max int64) ([]byte, error)
	ReadHead(ctx context.Context, p string, chunk int, max int64, more func(head []byte) bool) ([]byte, bool, error)
	WriteFile(ctx context.Context, p string, data []byte) error
	ReadDir(ctx context.Context, p string) ([]os.FileInfo, error)
	Remove(ctx context.Context, p string) error
	Mkdir(ctx context.Context, p string) error
	Touch(ctx context.Context, p string, t time.Time) error
	// Addr is the server reached, "" for a bundle.
	Addr() string
	Close() error
}

func (t *tick) setConn(c remote) {
	t.mu.Lock()
	old := t.conn
	t.conn = c
	t.mu.Unlock()
	// The bundle stays open for the whole tick (Run closes it).
	if old != nil && old != remote(t.local) {
		old.Close()
	}
}

func (t *tick) getConn() remote {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.conn
}

func (t *tick) closeConn() { t.setConn(nil) }

func (t *tick) activator(log io.Writer) *activate.Activator {
	return &activate.Activator{
		Nix: t.o.Nix,
		Paths: activate.Paths{
			Profile:       t.cfg.Profile,
			CurrentSystem: t.cfg.CurrentSystem,
			BootedSystem:  t.cfg.BootedSystem,
			RebootCommand: t.cfg.RebootCommand,
		},
		Log: log,
	}
}

// run is one tick. Each step either ends the tick (a pending operation
// to settle, nothing published, a refused publication) or hands on to
// the next; the decision table at the end is the whole policy.
func (t *tick) run(ctx context.Context) (Outcome, error) {
	st, err := t.loadTickState()
	if err != nil {
		return Outcome{}, err
	}
	if out, done, err := t.settlePending(ctx, &st); done {
		return out, err
	}
	if err := t.connectAndFlush(ctx, st); err != nil {
		return Outcome{}, err
	}
	head, out, done, err := t.publishedHead(ctx, &st)
	if done {
		return out, err
	}
	now := t.o.Now()
	d, due := t.decideHead(st, head, now)
	switch d {
	case upToDate:
		return t.stayUpToDate(ctx, &st, head)
	case waitRetry:
		return t.waitForRetry(ctx, &st, head, due)
	}
	return t.applyPublished(ctx, &st, head, now)
}

// loadTickState reads the state a tick starts from, and clears what an
// earlier tick killed mid-way may have left (a half-staged tree, an
// outcome recorded but not yet in the state).
func (t *tick) loadTickState() (State, error) {
	st, note, err := loadState(t.cfg.StateDir, t.o.Now())
	if err != nil {
		return State{}, err
	}
	t.note(note)
	t.pins = pinnedKeys(t.pubKeys, st)
	if _, err := activate.LoadPending(t.cfg.StateDir); errors.Is(err, statefile.ErrUnusable) {
		t.note(err.Error())
	}
	if err := t.store.Clean(); err != nil {
		return State{}, err
	}
	if err := t.adoptRecordedOutcome(&st); err != nil {
		return State{}, err
	}
	return st, nil
}

// settlePending finishes an operation an earlier tick left open, before
// anything new is fetched: the host may run a system nobody confirmed.
// done: the tick ends with out.
func (t *tick) settlePending(ctx context.Context, st *State) (out Outcome, done bool, err error) {
	if bootPending(*st) {
		// A boot operation whose health checks wait for the reboot.
		return t.settleBoot(ctx, st)
	}
	if st.Switch != nil {
		out, err := t.recoverSwitch(ctx, st)
		return out, true, err
	}
	return Outcome{}, false, nil
}

// connectAndFlush reaches a server and delivers the reports queued while
// none could be reached. Secrets are repaired even when no server
// answers: they do not depend on it.
func (t *tick) connectAndFlush(ctx context.Context, st State) error {
	if err := t.connect(ctx, t.cfg.ConnectAttempts); err != nil {
		t.repairSecrets(ctx, st)
		if n, _ := t.queue.List(); len(n) > 0 {
			return fmt.Errorf("%w (%d reports wait in %s)", err, len(n), t.queue.Dir)
		}
		return err
	}
	if err := t.flush(ctx); err != nil {
		// Undeliverable reports must not keep the host from updating:
		// they stay queued, and the tick goes on (or fails on its own if
		// the connection is gone).
		t.log.Warn("queued reports not delivered", "err", err)
	}
	return nil
}

// publishedHead reads the head of the published manifest. done: the tick
// ends with out (nothing published, a publication refused, an error).
func (t *tick) publishedHead(ctx context.Context, st *State) (head manifestHead, out Outcome, done bool, err error) {
	head, err = t.readHead(ctx)
	if transport.IsNotExist(err) {
		t.say("nothing is published for %s yet (no %s in its chroot): run bento deploy on the server", t.cfg.Host, manifest.ManifestFile)
		return head, Outcome{Action: ActionUnpublished}, true, nil
	}
	var bad *badManifest
	if errors.As(err, &bad) && !bad.otherHost {
		out, err := t.refuseHead(ctx, st, bad, err)
		return head, out, true, err
	}
	if err != nil {
		return head, Outcome{}, true, err
	}
	return head, Outcome{}, false, nil
}

// refuseHead reports what is wrong with the publication once per retry
// period, so the operator sees it in bento status without every tick
// reporting it again.
func (t *tick) refuseHead(ctx context.Context, st *State, bad *badManifest, err error) (Outcome, error) {
	if d, due := decide(*st, bad.head.versionOr("invalid"), bad.head.Expected, t.o.Now(), t.retry); d == waitRetry {
		return Outcome{Action: ActionWaiting}, fmt.Errorf("%w (reported; next check after %s)", err, due.Format(time.RFC3339))
	}
	return t.refuse(ctx, st, bad.head, err)
}

// decideHead is decide, with --now overriding a retry wait (but not an
// attempt still marked running: that one is reported first).
func (t *tick) decideHead(st State, head manifestHead, now time.Time) (decision, time.Time) {
	d, due := decide(st, head.Version, head.Expected, now, t.retry)
	if d == waitRetry && t.o.RetryNow && !st.Attempt.Running {
		t.say("--now: trying version %s again without waiting for its retry (due %s)", head.Version, due.Format(time.RFC3339))
		d = apply
	}
	return d, due
}

// stayUpToDate handles the version already applied.
func (t *tick) stayUpToDate(ctx context.Context, st *State, head manifestHead) (Outcome, error) {
	if len(t.pins) > 0 && head.Sequence > st.Publication.Sequence {
		// The same version, published anew (re-signed, a next key
		// announced): nothing to apply, but verified and remembered.
		if err := t.acceptSame(ctx, st); err != nil {
			return t.refuse(ctx, st, head, err)
		}
	}
	if t.cfg.SelfUpdate {
		return t.selfUpdate(ctx, st, head)
	}
	return t.upToDate(ctx, *st, head)
}

// waitForRetry handles a version that failed and is not due again yet:
// an attempt a crash interrupted is reported now, and the upkeep that
// does not depend on the version (secrets, a due reboot) still happens.
func (t *tick) waitForRetry(ctx context.Context, st *State, head manifestHead, due time.Time) (Outcome, error) {
	out := Outcome{Action: ActionWaiting}
	var cause error
	if st.Attempt.Running {
		out, cause = t.reportInterrupted(ctx, st)
	} else {
		t.say("version %s failed %d time(s) (%s); next retry after %s", head.Version, st.Attempt.Count, st.Attempt.Result, due.Format(time.RFC3339))
		cause = fmt.Errorf("version %s failed; next retry after %s", head.Version, due.Format(time.RFC3339))
	}
	t.repairSecrets(ctx, *st)
	rebooted, rerr := t.rebootIfDue(ctx, t.activator(t.o.Out))
	out.Rebooted = rebooted
	return out, errors.Join(cause, rerr)
}

// applyPublished reads the whole manifest of a new version, refuses it
// if it is stale or not this host's, and applies it.
func (t *tick) applyPublished(ctx context.Context, st *State, head manifestHead, now time.Time) (Outcome, error) {
	m, err := t.readManifest(ctx)
	var bad *badManifest
	if errors.As(err, &bad) && !bad.otherHost {
		return t.refuse(ctx, st, head, err)
	}
	if err != nil {
		return Outcome{}, err
	}
	if err := checkFresh(*st, m, len(t.pins) > 0, time.Duration(t.cfg.MaxPublicationAge), now); err != nil {
		return t.refuse(ctx, st, head, err)
	}
	st.accept(m, t.pubKeys)
	return t.apply(ctx, st, m)
}

// acceptSame verifies the manifest of the version already applied and
// records it (its sequence, a next key it announces).
func (t *tick) acceptSame(ctx context.Context, st *State) error {
	m, err := t.readManifest(ctx)
	if err != nil {
		return err
	}
	if err := checkFresh(*st, m, true, 0, t.o.Now()); err != nil {
		return err
	}
	st.accept(m, t.pubKeys)
	if err := saveState(t.cfg.StateDir, *st); err != nil {
		t.say("warning: %v", describeDiskError(err))
	}
	return nil
}

// badManifest is a published manifest the agent refuses to act on.
type badManifest struct {
	err  error
	head manifestHead
	// otherHost: the manifest names another host. The chroot is not
	// this host's (a configuration mistake): nothing is reported there.
	otherHost bool
}

func (b *badManifest) Error() string { return b.err.Error() }
func (b *badManifest) Unwrap() error { return b.err }

func (h manifestHead) versionOr(fallback string) string {
	if h.Version == "" || strings.ContainsAny(h.Version, "/\\\x00") || len(h.Version) > 128 {
		return fallback
	}
	return h.Version
}

// headChunk is the first read of manifest.json: enough for the keys
// before "files" in the publisher's layout.
const headChunk = 512

func (t *tick) readHead(ctx context.Context) (manifestHead, error) {
	data, complete, err := t.getConn().ReadHead(ctx, manifest.ManifestFile, headChunk, manifest.MaxSize, func(b []byte) bool {
		_, ok := parseHead(b)
		return !ok
	})
	if err != nil {
		return manifestHead{}, tooLarge(err, data)
	}
	h, ok := parseHead(data)
	if !ok || h.Format < manifest.MinManifestFormat || h.Format > manifest.ManifestFormat || h.Host != t.cfg.Host {
		// Let the full parse explain what is wrong.
		if !complete {
			head := data
			data, err = t.getConn().ReadFile(ctx, manifest.ManifestFile, manifest.MaxSize)
			if err != nil {
				return manifestHead{}, tooLarge(err, head)
			}
		}
		m, err := t.parseManifest(data)
		if err != nil {
			var bad *badManifest
			if errors.As(err, &bad) {
				bad.head = h
			}
			return manifestHead{Version: h.Version, Expected: h.Expected}, err
		}
		return manifestHead{Format: m.Format, Host: m.Host, Version: m.Version, Expected: m.ExpectedToplevel}, nil
	}
	return h, nil
}

func (t *tick) readManifest(ctx context.Context) (*manifest.Manifest, error) {
	data, err := t.getConn().ReadFile(ctx, manifest.ManifestFile, manifest.MaxSize)
	if err != nil {
		return nil, tooLarge(err, data)
	}
	return t.parseManifest(data)
}

// tooLarge turns a manifest over the size limit into a refused one, so it
// is reported (once per retry period) rather than failing every tick
// unseen. Other errors are returned as they are.
func tooLarge(err error, data []byte) error {
	var tl *transport.TooLargeError
	if !errors.As(err, &tl) {
		return err
	}
	h, _ := parseHead(data)
	return &badManifest{err: fmt.Errorf("refusing the published %s: it is over the %d byte limit", manifest.ManifestFile, manifest.MaxSize), head: h}
}

func (t *tick) parseManifest(data []byte) (*manifest.Manifest, error) {
	// With keys pinned, what is parsed is only what the signature
	// covers: the verification happens here, wherever the manifest came
	// from.
	m, err := manifest.ParseVerified(data, t.pins)
	if err != nil {
		h, _ := parseHead(data)
		return nil, &badManifest{err: fmt.Errorf("refusing the published %s: %w", manifest.ManifestFile, err), head: h}
	}
	if m.Host != t.cfg.Host {
		also := ""
		if len(t.pins) > 0 {
			also = "; or the server (a mirror) swapped in another host's signed manifest"
		}
		return nil, &badManifest{otherHost: true, err: fmt.Errorf("the published %s is for host %q, not %q: if this host is %q in the fleet's nixosConfigurations, set services.bento.host = %q; (--host); otherwise user %q reads another host's chroot: check services.bento.user here and on the server%s", manifest.ManifestFile, m.Host, t.cfg.Host, m.Host, m.Host, t.cfg.User, also)}
	}
	return m, nil
}

// newReport starts the report of an attempt.
func (t *tick) newReport(st *State, version, expected string, now time.Time) manifest.Report {
	server := ""
	if c := t.getConn(); c != nil {
		// Where it was read; deliver sets where it went.
		server = c.Addr()
	}
	return manifest.Report{
		Server:           server,
		Format:           manifest.Format,
		Host:             t.cfg.Host,
		SeenVersion:      version,
		AppliedVersion:   st.AppliedVersion,
		AttemptedVersion: version,
		ExpectedToplevel: expected,
		Mode:             t.cfg.Mode,
		Operation:        t.cfg.Operation,
		AgentVersion:     t.o.AgentVersion,
		StartedAt:        now.UTC(),
		Attempts:         st.Attempt.Count,
	}
}

// refuse reports a publication the agent will not act on (an invalid or
// unsafe manifest), so the operator sees why in bento status.
func (t *tick) refuse(ctx context.Context, st *State, head manifestHead, cause error) (Outcome, error) {
	now := t.o.Now()
	version := head.versionOr("invalid")
	st.begin(version, head.Expected, now)
	rep := t.newReport(st, version, head.Expected, now)
	recordFailure(&rep, manifest.StageFailed, manifest.ResultFailure, cause)
	log := newLogBuffer(t.cfg.LogMaxBytes, t.o.Out)
	log.Printf("%v", cause)
	return t.finishAttempt(ctx, st, &rep, log, ActionFailed, cause)
}

// finishAttempt records the attempt's end in the state, queues its
// report and log, and delivers them.
//
// The outcome is on disk before anything is sent: the report is queued
// (and copied to last-report.json), then the state saved. A tick killed
// between the two finds its state "running" with the report of that very
// attempt queued or in last-report.json, and adopts the outcome
// (adoptRecordedOutcome) instead of repeating the attempt; a kill after
// both only delays the delivery to the next tick.
func (t *tick) finishAttempt(ctx context.Context, st *State, rep *manifest.Report, log *logBuffer, action string, cause error) (Outcome, error) {
	now := t.o.Now()
	st.finish(rep.Result, now, t.retry)
	if !bootPending(*st) {
		st.Switch = nil
	}
	if !final(rep.Result) {
		next := st.Attempt.NextRetry.UTC()
		rep.NextRetry = &next
		log.Printf("will retry version %s after %s (attempt %d failed)", rep.AttemptedVersion, next.Format(time.RFC3339), st.Attempt.Count)
	}
	rep.AppliedVersion = st.AppliedVersion
	act := t.activator(io.Discard)
	rep.CurrentSystem, _ = act.Current()
	rep.BootedSystem, _ = act.Booted()
	rep.FinishedAt = now.UTC()
	rep.Log = logName(rep.AttemptedVersion, rep.StartedAt)
	rep.Error = t.withNotes(rep.Error)
	if rep.Summary != "" {
		rep.Summary = t.withNotes(rep.Summary)
	}
	out := Outcome{Action: action, Report: rep, Fetched: t.fetched}
	t.progress.stage(manifest.ProgressReporting)
	gz, name, qerr := t.enqueue(rep, rep.Log, log.Bytes(), true)
	saveErr := saveState(t.cfg.StateDir, *st)
	if saveErr != nil {
		saveErr = describeDiskError(saveErr)
		t.say("warning: the outcome could not be saved: %v", saveErr)
		addError(rep, "state not saved: "+saveErr.Error())
	}
	if ctx.Err() != nil {
		// Stopping (a signal during the activation): the outcome is
		// recorded; give its delivery a short, bounded chance.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopDeliveryTimeout)
		defer cancel()
		ctx = dctx
	}
	// The stage "reporting" shows while a slow delivery goes on.
	err := t.push(ctx, *rep, name, gz, qerr)
	out.ProgressUploads = t.endProgress()
	if err != nil {
		return out, errors.Join(cause, err, saveErr)
	}
	return out, errors.Join(cause, saveErr)
}

// stopDeliveryTimeout bounds the delivery of an activation's report once a
// signal asked the agent to stop.
const stopDeliveryTimeout = 20 * time.Second

func joinMsg(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// describeDiskError names a full disk as "disk full: <path>", the words
// the report and status show.
func describeDiskError(err error) error {
	if !errors.Is(err, syscall.ENOSPC) && !errors.Is(err, syscall.EDQUOT) {
		return err
	}
	var pe *fs.PathError
	path := "the state directory"
	if errors.As(err, &pe) {
		path = pe.Path
		if strings.HasPrefix(filepath.Base(path), ".tmp-") {
			// A temp file's name says nothing; its directory does.
			path = filepath.Dir(path)
		}
	}
	return fmt.Errorf("disk full: %s: %w", path, err)
}

// logTimeLayout sorts as text in time order.
const logTimeLayout = "20060102T150405.000Z"

func logName(version string, started time.Time) string {
	// Milliseconds: two attempts of a version in the same second (a quick
	// retry) must not share a name.
	return version + "-" + started.UTC().Format(logTimeLayout) + ".log.gz"
}

// send queues a report (and its log) and delivers the queue. When the
// connection is gone it reconnects once (with retries); when the server
// stays unreachable the report waits in the queue.
func (t *tick) send(ctx context.Context, rep manifest.Report, logName string, log []byte, withLog bool) error {
	gz, logName, qerr := t.enqueue(&rep, logName, log, withLog)
	return t.push(ctx, rep, logName, gz, qerr)
}

// enqueue puts a report in the queue and in last-report.json. When the
// queue cannot hold it (a full disk), the report says so and the error
// is returned for push to deliver it directly.
func (t *tick) enqueue(rep *manifest.Report, logName string, log []byte, withLog bool) ([]byte, string, error) {
	var gz []byte
	if withLog {
		gz = gzipBytes(log)
	} else {
		logName = ""
	}
	if !withLog {
		// A heartbeat waiting from an earlier tick says nothing this one
		// does not say better.
		if entries, err := t.queue.List(); err == nil {
			for _, e := range entries {
				if !e.HasLog && e.Report.Result == manifest.ResultUnchanged {
					t.queue.Done(e)
				}
			}
		}
	}
	if _, err := t.queue.Put(*rep, logName, gz); err != nil {
		qerr := describeDiskError(err)
		t.say("warning: the report cannot be queued (%v): sending it directly", qerr)
		addError(rep, "report not queued: "+qerr.Error())
		return gz, logName, qerr
	}
	if data, err := json.Marshal(rep); err == nil {
		atomicfile.WriteFile(filepath.Join(t.cfg.StateDir, lastReportFile), data, 0o644)
	}
	return gz, logName, nil
}

// push delivers the queue; a report that could not be queued (qerr) goes
// over the connection directly, rather than the host going silent.
func (t *tick) push(ctx context.Context, rep manifest.Report, logName string, gz []byte, qerr error) error {
	if qerr != nil {
		return t.sendDirect(ctx, rep, logName, gz)
	}
	if t.getConn() != nil {
		if err := t.flush(ctx); err == nil {
			return nil
		}
	}
	if err := t.connect(ctx, t.cfg.ConnectAttempts); err != nil {
		t.say("cannot deliver the report now; it waits in %s for the next tick: %v", t.queue.Dir, err)
		return fmt.Errorf("%w in %s, the server is unreachable: %w", ErrQueued, t.queue.Dir, err)
	}
	if err := t.flush(ctx); err != nil {
		return fmt.Errorf("%w in %s: %w", ErrQueued, t.queue.Dir, err)
	}
	return nil
}

// sendDirect delivers a report that could not be queued: what is queued
// first (in order), then this one, over the open connection (or a new one).
func (t *tick) sendDirect(ctx context.Context, rep manifest.Report, logName string, gz []byte) error {
	if t.getConn() == nil {
		if err := t.connect(ctx, t.cfg.ConnectAttempts); err != nil {
			return fmt.Errorf("the report could not be queued nor delivered: %w", err)
		}
	}
	if err := t.flush(ctx); err != nil {
		t.log.Warn("queued reports not delivered", "err", err)
	}
	if err := t.deliver(ctx, queue.Entry{Report: rep, LogName: logName, HasLog: gz != nil}, gz); err != nil {
		return fmt.Errorf("the report could not be queued nor delivered: %w", err)
	}
	return nil
}

// deliver writes one report (its log first, then status.json, replaced
// atomically) to the server.
func (t *tick) deliver(ctx context.Context, e queue.Entry, log []byte) error {
	c := t.getConn()
	if e.HasLog {
		if err := c.Mkdir(ctx, manifest.LogsDir); err != nil {
			return err
		}
		if err := c.WriteFile(ctx, manifest.LogsDir+"/"+e.LogName, log); err != nil {
			return err
		}
	}
	// The server it reached, whichever tick made the report: status
	// shows where each host was last heard from.
	e.Report.Server = c.Addr()
	key := reportKey(e.Report)
	if !e.HasLog && e.Report.Result == manifest.ResultUnchanged && key == t.delivered() {
		// The server holds this very report but for its times: moving
		// status.json's mtime says "seen now" in one small request
		// instead of a whole upload (status reads the mtime of an
		// unchanged report as its time).
		if err := c.Touch(ctx, manifest.StatusFile, e.Report.FinishedAt); err == nil {
			return nil
		}
	}
	body, err := json.MarshalIndent(e.Report, "", "  ")
	if err != nil {
		return err
	}
	if err := c.WriteFile(ctx, manifest.StatusFile, append(body, '\n')); err != nil {
		return err
	}
	t.setDelivered(key)
	return nil
}

// flush delivers the queued reports in order: each one's log, then
// status.json (replaced atomically), then it leaves the queue.
func (t *tick) flush(ctx context.Context) error {
	entries, err := t.queue.List()
	if err != nil || len(entries) == 0 {
		return err
	}
	c := t.getConn()
	logged, err := t.deliverQueued(ctx, entries)
	if err != nil {
		return err
	}
	if len(entries) > 1 || entries[0].HasLog {
		t.say("delivered %d report(s) to %s", len(entries), manifest.StatusFile)
	}
	if logged {
		if err := pruneLogs(ctx, c, t.cfg.LogsKept); err != nil {
			t.say("warning: could not remove old logs: %v", err)
		}
	}
	return nil
}

// deliverQueued delivers entries in order, each leaving the queue once
// the server has it. logged: one of them had a log.
func (t *tick) deliverQueued(ctx context.Context, entries []queue.Entry) (logged bool, err error) {
	for _, e := range entries {
		data, err := t.queue.Log(e)
		if err != nil {
			return logged, err
		}
		if err := t.deliver(ctx, e, data); err != nil {
			return logged, err
		}
		if err := t.queue.Done(e); err != nil {
			return logged, err
		}
		logged = logged || e.HasLog
	}
	return logged, nil
}
