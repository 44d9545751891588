package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/bento-nix/bento/agent/transport"
	"github.com/bento-nix/bento/manifest"
)

// progressEvery is the shortest time between two uploads of live
// progress: stages that pass quicker are not shown (the report says how
// the tick ended), and a chatty build costs at most one log chunk per
// interval on the wire.
const progressEvery = 2 * time.Second

// progressStopWait bounds how long the end of a tick waits for an upload
// of live progress still under way; past it the upload is cut off (which
// closes its connection: the report's delivery opens another).
const progressStopWait = 5 * time.Second

// liveProgress uploads, during an attempt, reports/progress.json at each
// stage and the attempt's log as it grows (reports/logs/<name>.log,
// appended in chunks), so that bento status and bento logs --follow on the
// server see a tick under way. It is best effort: a failed upload is
// said once and never fails the tick. A tick that applies nothing never
// starts one, so an idle tick sends nothing more.
type liveProgress struct {
	t   *tick
	max int64 // bound of the live log (logMaxBytes)

	mu      sync.Mutex
	rec     manifest.Progress
	dirty   bool   // rec changed since its last upload
	pending []byte // log bytes not uploaded yet
	sent    int64  // log bytes uploaded: the live log's size
	cut     bool   // the live log reached max: no more chunks
	failed  bool   // an upload failed (said once)

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
			Log: strings.TrimSuffix(logName(version, started), ".gz"),
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

// stage records that the attempt entered s.
func (p *liveProgress) stage(s manifest.ProgressStage) {
	if p == nil {
		return
	}
	p.mu.Lock()
	if p.rec.Stage != s {
		p.rec.Stage, p.rec.StageStartedAt, p.dirty = s, p.t.o.Now().UTC(), true
	}
	p.mu.Unlock()
	p.signal()
}

// write takes the log's new bytes (called under the log's lock).
func (p *liveProgress) write(b []byte) {
	p.mu.Lock()
	if !p.cut {
		room := p.max - p.sent - int64(len(p.pending))
		if int64(len(b)) > room {
			note := fmt.Sprintf("\n[… the live log stops at logMaxBytes (%d bytes); the report's log has the end …]\n", p.max)
			b = b[:max(0, room)]
			p.pending = append(append(p.pending, b...), note...)
			p.cut = true
		} else {
			p.pending = append(p.pending, b...)
		}
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

// run uploads what changed, at most once per progressEvery, until stop.
func (p *liveProgress) run(ctx context.Context) {
	defer close(p.done)
	var last time.Time
	for {
		select {
		case <-p.stop:
			return
		case <-p.kick:
		}
		if wait := progressEvery - time.Since(last); !last.IsZero() && wait > 0 {
			timer := time.NewTimer(wait)
			select {
			case <-p.stop:
				timer.Stop()
				return
			case <-timer.C:
			}
		}
		last = time.Now()
		p.upload(ctx)
	}
}

// upload sends the log's new bytes, then the progress record if it
// changed: a reader that sees a stage finds the log that led to it.
func (p *liveProgress) upload(ctx context.Context) {
	c := p.t.getConn()
	if c == nil {
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
		if off == 0 {
			err = c.Mkdir(ctx, manifest.LogsDir)
		}
		if err == nil {
			err = c.WriteAt(ctx, manifest.LogsDir+"/"+rec.Log, chunk, off)
		}
		p.mu.Lock()
		if err == nil {
			p.sent += int64(len(chunk))
		} else {
			// Offsets must stay in step with the file: what did not
			// reach it goes again with the next chunk.
			p.pending = append(chunk, p.pending...)
		}
		p.mu.Unlock()
	}
	if dirty && err == nil {
		body, _ := json.Marshal(rec)
		err = c.WriteFile(ctx, manifest.ProgressFile, append(body, '\n'))
		if err != nil {
			p.mu.Lock()
			p.dirty = true
			p.mu.Unlock()
		}
	}
	if err != nil && !p.failed {
		p.failed = true
		p.t.say("warning: live progress not uploaded (the report will be): %v", err)
	}
}

// finish stops the uploads before the report goes; it returns the live
// log's name when some of it reached the server (the report's log
// replaces it once delivered).
func (p *liveProgress) finish() string {
	if p == nil {
		return ""
	}
	close(p.stop)
	select {
	case <-p.done:
	case <-time.After(progressStopWait):
		p.cancel()
		<-p.done
	}
	p.cancel()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sent == 0 {
		return ""
	}
	return p.rec.Log
}

// endProgress stops the live progress of the tick's attempt; once the
// report (with its gzipped log) is delivered, the live log goes.
// progress.json stays: the report's startedAt tells readers it is over,
// which costs nothing more on the wire.
func (t *tick) endProgress(ctx context.Context, delivered bool) {
	live := t.progress.finish()
	t.progress = nil
	if live == "" || !delivered || t.getConn() == nil {
		return
	}
	if err := t.getConn().Remove(ctx, manifest.LogsDir+"/"+live); err != nil && !transport.IsNotExist(err) {
		t.say("warning: could not remove the live log %s: %v", live, err)
	}
}
