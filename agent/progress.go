package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/bento-nix/bento/agent/transport"
	"github.com/bento-nix/bento/manifest"
)

// progressEvery is how long an attempt runs before its first upload of
// live progress, and the shortest time between two uploads of a new
// stage: a quick tick sends none (its report says it all), and stages that
// pass quicker are not shown.
const progressEvery = 2 * time.Second

// logEvery is the shortest time between two uploads of log output alone:
// a chatty build costs one chunk per interval on the wire.
const logEvery = 10 * time.Second

// progressStopWait bounds how long the end of a tick waits for an upload
// of live progress still under way; past it the upload is cut off (which
// closes its connection: the report's delivery opens another).
const progressStopWait = 5 * time.Second

// liveProgress uploads, during an attempt, reports/progress.json at each
// stage and the attempt's log as it grows (appended in gzip members to
// reports/logs/<name>.log.gz, the name the report's log replaces), so that bento status and bento logs --follow on the
// server see a tick under way. It is best effort: a failed upload is
// said once and never fails the tick. A tick that applies nothing never
// starts one, so an idle tick sends nothing more.
type liveProgress struct {
	t   *tick
	max int64 // bound of the live log (logMaxBytes)

	mu       sync.Mutex
	rec      manifest.Progress
	dirty    bool   // rec changed since its last upload
	pending  []byte // log bytes not uploaded yet
	accepted int64  // log bytes taken (uploaded or pending), against max
	sent     int64  // bytes uploaded: the live log's size on the server
	cut      bool   // the live log reached max: no more chunks
	failed   bool   // an upload failed (said once; only run's goroutine uses it)
	records  int    // records uploaded

	// uploading is held during an upload: the report's log must not be
	// written while a chunk of the growing one still is.
	uploading sync.Mutex

	kick   chan struct{}
	stop   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

// startProgress begins live progress for an attempt of version started at
// started; log is the attempt's log, whose new bytes it uploads. Nil when
// Options.NoProgress.
func (t *tick) startProgress(ctx context.Context, version string, started time.Time, log *logBuffer) *liveProgress {
	if t.o.NoProgress {
		return nil
	}
	p := &liveProgress{
		t:   t,
		max: t.cfg.LogMaxBytes,
		rec: manifest.Progress{
			Format: manifest.ProgressFormat, Host: t.cfg.Host, Version: version,
			StartedAt: started.UTC(), Stage: manifest.ProgressFetching, StageStartedAt: started.UTC(),
			// The report's log, under the same name: its delivery
			// replaces the growing copy (one gzip stream either way).
			Log: logName(version, started),
		},
		dirty: true,
		kick:  make(chan struct{}, 1),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	// The uploads outlive a cancelled tick only until stop: a signal
	// during the activation still lets the stages show.
	uctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p.cancel = cancel
	log.tap = p.write
	p.signal()
	go p.run(uctx)
	return p
}

// stage records that the attempt entered s. From "reporting" on, the log
// is the report's to deliver: no chunk is sent any more, and none is
// under way when stage returns.
func (p *liveProgress) stage(s manifest.ProgressStage) {
	if p == nil {
		return
	}
	p.mu.Lock()
	if p.rec.Stage != s {
		p.rec.Stage, p.rec.StageStartedAt, p.dirty = s, p.t.o.Now().UTC(), true
	}
	if s == manifest.ProgressReporting {
		p.cut, p.pending = true, nil
	}
	p.mu.Unlock()
	if s == manifest.ProgressReporting {
		// A barrier: an upload in flight finishes before the report (and its
		// log, which replaces the live one) goes up; none starts after cut.
		p.uploading.Lock()
		//lint:ignore SA2001 taking and releasing the lock is the wait
		p.uploading.Unlock()
	}
	p.signal()
}

// write takes the log's new bytes (called under the log's lock).
func (p *liveProgress) write(b []byte) {
	p.mu.Lock()
	if !p.cut {
		room := p.max - p.accepted
		if int64(len(b)) > room {
			note := fmt.Sprintf("\n[… the live log stops at logMaxBytes (%d bytes); the report's log has the end …]\n", p.max)
			b = b[:max(0, room)]
			p.pending = append(append(p.pending, b...), note...)
			p.cut = true
		} else {
			p.pending = append(p.pending, b...)
		}
		p.accepted += int64(len(b))
	}
	p.mu.Unlock()
	p.signal()
}

func (p *liveProgress) signal() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// run uploads what changed until stop: a new stage at most once per
// progressEvery, log output alone at most once per logEvery, nothing in
// the attempt's first progressEvery.
func (p *liveProgress) run(ctx context.Context) {
	defer close(p.done)
	last := time.Now()
	for {
		p.mu.Lock()
		dirty, output := p.dirty, len(p.pending) > 0
		p.mu.Unlock()
		if !dirty && !output {
			if !p.idle() {
				return
			}
			continue
		}
		gap := logEvery
		if dirty {
			gap = progressEvery
		}
		stopped, kicked := p.pause(gap - time.Since(last))
		if stopped {
			return
		}
		if kicked {
			continue
		}
		last = time.Now()
		p.upload(ctx)
	}
}

// idle waits, with nothing to upload, for a change; false on stop.
func (p *liveProgress) idle() bool {
	select {
	case <-p.stop:
		return false
	case <-p.kick:
		return true
	}
}

// pause waits out wait (the rest of the gap between two uploads) unless
// the uploads stop, or a change comes first (kicked: look again).
func (p *liveProgress) pause(wait time.Duration) (stopped, kicked bool) {
	if wait <= 0 {
		return false, false
	}
	timer := time.NewTimer(wait)
	select {
	case <-p.stop:
		timer.Stop()
		return true, false
	case <-p.kick:
		// A new stage may shorten the wait.
		timer.Stop()
		return false, true
	case <-timer.C:
		return false, false
	}
}

// liveRemote is a connection that takes live progress (transport.Conn).
type liveRemote interface {
	Mkdir(ctx context.Context, p string) error
	WriteAt(ctx context.Context, p string, data []byte, off int64) error
	WriteFileNoSync(ctx context.Context, p string, data []byte) error
}

// upload sends the log's new bytes, then the progress record if it
// changed: a reader that sees a stage finds the log that led to it.
func (p *liveProgress) upload(ctx context.Context) {
	p.uploading.Lock()
	defer p.uploading.Unlock()
	// Only a server gets live progress (an offline bundle has no one
	// watching it).
	c, ok := p.t.getConn().(liveRemote)
	if !ok {
		return
	}
	p.mu.Lock()
	chunk, off := p.pending, p.sent
	p.pending = nil
	rec, dirty := p.rec, p.dirty
	p.dirty = false
	p.mu.Unlock()
	var err error
	if len(chunk) > 0 {
		err = p.uploadChunk(ctx, c, rec.Log, chunk, off)
	}
	if dirty && err == nil {
		err = p.uploadRecord(ctx, c, rec)
	}
	if err != nil && !p.failed {
		p.failed = true
		p.t.say("warning: live progress not uploaded (the report will be): %v", err)
	}
}

// uploadChunk appends chunk to the live log log at off.
func (p *liveProgress) uploadChunk(ctx context.Context, c liveRemote, log string, chunk []byte, off int64) error {
	// Each chunk is a gzip member of its own: the file is one gzip
	// stream at every chunk's end, a fraction of the bytes.
	gz := gzipBytes(chunk)
	name := manifest.LogsDir + "/" + log
	err := c.WriteAt(ctx, name, gz, off)
	if transport.IsNotExist(err) && off == 0 {
		// A host's first log: reports/logs is not there yet.
		if err = c.Mkdir(ctx, manifest.LogsDir); err == nil {
			err = c.WriteAt(ctx, name, gz, off)
		}
	}
	p.mu.Lock()
	if err == nil {
		p.sent += int64(len(gz))
	} else if !p.cut || p.rec.Stage != manifest.ProgressReporting {
		// Offsets must stay in step with the file: what did not
		// reach it goes again with the next chunk.
		p.pending = append(chunk, p.pending...)
	}
	p.mu.Unlock()
	return err
}

// uploadRecord replaces progress.json with rec; a record that did not
// get there goes again with the next upload.
func (p *liveProgress) uploadRecord(ctx context.Context, c liveRemote, rec manifest.Progress) error {
	body, _ := json.Marshal(rec)
	err := c.WriteFileNoSync(ctx, manifest.ProgressFile, append(body, '\n'))
	p.mu.Lock()
	if err == nil {
		p.records++
	} else {
		p.dirty = true
	}
	p.mu.Unlock()
	return err
}

// finish stops the uploads before the report goes: its log replaces the
// growing one.
func (p *liveProgress) finish() {
	if p == nil {
		return
	}
	close(p.stop)
	select {
	case <-p.done:
	case <-time.After(progressStopWait):
		p.cancel()
		<-p.done
	}
	p.cancel()
}

// endProgress stops the live progress of the tick's attempt and says how
// many records it uploaded. Nothing is
// removed: the report's log replaces the growing one under its name, and
// progress.json stays, the report's startedAt telling readers it is over
// (which costs nothing more on the wire).
func (t *tick) endProgress() int {
	p := t.progress
	t.progress = nil
	if p == nil {
		return 0
	}
	p.finish()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.records
}
