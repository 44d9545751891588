package publish

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bento-nix/bento/manifest"
	"golang.org/x/sys/unix"
)

// commit makes the prepared jobs durable and live, in the order the
// Publish comment gives, then applies the retention rule.
func (p *Publisher) commit(ctx context.Context, jobs []*hostJob) {
	if err := ctx.Err(); err != nil {
		p.abandon(jobs, err)
		return
	}
	p.opts.Hook(StepPrepared, "")
	p.syncContents(jobs)
	p.opts.Hook(StepSynced, "")
	committing := p.markCommitting(jobs)
	p.renameObjects(jobs)
	p.parallel(len(jobs), func(i int) { p.linkAndWrite(jobs[i]) })
	p.syncJobs(jobs, "writing the new manifests", false)
	p.switchManifests(jobs)
	p.syncJobs(jobs, "making the new manifests durable", false)
	changed := p.retain(jobs)
	p.collect(jobs, committing, changed)
	if err := p.settleMarker(); err != nil {
		noteFirst(jobs, func(j *hostJob) bool { return j.res.Err == nil }, err)
	}
}

// abandon fails every job still writing when the deploy was cancelled
// before anything went live, and drops the pool's temporary copies.
func (p *Publisher) abandon(jobs []*hostJob, err error) {
	for _, j := range jobs {
		if j.writing() {
			j.fail(fmt.Errorf("interrupted before anything went live: %w", err))
		}
	}
	p.discardPool()
}

// syncContents is step 2: the new objects' and secrets' contents reach
// the disk (a syncfs flushes the whole file system: none when nothing
// was written).
func (p *Publisher) syncContents(jobs []*hostJob) {
	if slices.ContainsFunc(jobs, (*hostJob).writing) {
		p.syncJobs(jobs, "writing the new objects", true)
	}
}

// markCommitting returns the jobs about to write links and names them in
// the marker first: from here on a kill may leave links that no manifest
// names, and the marker makes the next deploy look for them.
func (p *Publisher) markCommitting(jobs []*hostJob) []*hostJob {
	var committing []*hostJob
	var names []string
	for _, j := range jobs {
		if j.writing() {
			committing = append(committing, j)
			names = append(names, j.name)
		}
	}
	if len(committing) == 0 {
		return nil
	}
	if err := p.mark(names); err != nil {
		for _, j := range committing {
			j.fail(err)
		}
	}
	return committing
}

// renameObjects is the first half of step 3: each new object renamed to
// its pool name (once, by the job that wrote it).
func (p *Publisher) renameObjects(jobs []*hostJob) {
	for _, j := range jobs {
		if !j.writing() {
			continue
		}
		for _, o := range j.objs {
			if err := o.commit(); err != nil {
				j.fail(err)
				break
			}
		}
	}
}

// linkAndWrite is the second half of step 3 for one job: the objects
// linked into its chroot, the secrets renamed into place, the new
// manifest written aside (and its copy kept by the retention record).
func (p *Publisher) linkAndWrite(j *hostJob) {
	if !j.writing() {
		return
	}
	if err := p.linkJob(j); err != nil {
		j.fail(err)
		return
	}
	p.opts.Hook(StepLinked, j.name)
	removeStaleTemps(j.hostDir)
	now := p.opts.Now()
	j.m.PublishedAt = now.UTC().Truncate(time.Millisecond)
	seq, err := p.nextSequence(j, now)
	if err != nil {
		j.fail(err)
		return
	}
	j.m.Sequence = seq
	tmp, n, err := writeManifestTemp(j.hostDir, j.m, p.opts.SigningKey)
	if err == nil {
		err = advanceMtime(j.hostDir, tmp, p.opts.Now())
	}
	if err != nil {
		j.fail(err)
		return
	}
	j.tmpManifest = tmp
	j.res.BytesWritten += n
	if hasObjects(j.m) {
		// The record's copy of what this manifest names: a hard link,
		// no bytes.
		e := histEntry{Version: j.m.Version, Format: j.m.Format, Objects: true}
		if err := p.saveCopy(j.name, e, tmp); err != nil {
			j.fail(fmt.Errorf("retention record: %w", err))
			return
		}
	}
	p.opts.Hook(StepManifestWritten, j.name)
}

// switchManifests is step 4, the switch: each manifest.json replaced by
// rename.
func (p *Publisher) switchManifests(jobs []*hostJob) {
	for _, j := range jobs {
		if !j.writing() {
			continue
		}
		if err := os.Rename(j.tmpManifest, filepath.Join(j.hostDir, manifest.ManifestFile)); err != nil {
			j.fail(err)
			continue
		}
		j.tmpManifest = ""
		p.opts.Hook(StepLive, j.name)
	}
}

// retain is step 5, retention: what no manifest of the window names
// leaves the chroot. It returns whether any job removed or published
// something.
func (p *Publisher) retain(jobs []*hostJob) bool {
	var changed atomic.Bool
	p.parallel(len(jobs), func(i int) {
		j := jobs[i]
		if j.res.Err != nil {
			return
		}
		if p.finish(j) {
			changed.Store(true)
		}
		p.opts.Logger.Debug("published", "host", j.name, "version", j.res.Version, "status", j.res.Status,
			"copied", j.res.Copied, "linked", j.res.Linked, "shared", j.res.Shared, "removed", j.res.Removed)
	})
	return changed.Load()
}

// collect is step 6: the pool drops what no chroot links. A failed
// committing job stays in the marker: its links may name nothing.
func (p *Publisher) collect(jobs, committing []*hostJob, changed bool) {
	for _, j := range committing {
		if j.res.Err != nil {
			p.keepPending(j.name)
		}
	}
	if !changed && len(p.pool) == 0 && !p.poolScan {
		return
	}
	p.discardPool()
	var candidates map[string]bool
	if !p.poolScan {
		candidates = p.removed
		for sum := range p.pool {
			candidates[sum] = true
		}
	}
	if _, err := p.collectPool(candidates); err != nil {
		p.poolFailed.Store(true)
		noteFirst(jobs, func(j *hostJob) bool { return j.res.Err == nil && j.res.Status == StatusPublished }, err)
	}
	p.opts.Hook(StepCollected, "")
}

// noteFirst reports err as a note of the first job that ok accepts: a
// deploy-wide problem shown once.
func noteFirst(jobs []*hostJob, ok func(*hostJob) bool, err error) {
	for _, j := range jobs {
		if ok(j) {
			j.res.Notes = append(j.res.Notes, err.Error())
			return
		}
	}
}

// discardPool removes the temporary copies that were never renamed (their
// hosts failed, or the deploy was interrupted).
func (p *Publisher) discardPool() {
	p.poolMu.Lock()
	defer p.poolMu.Unlock()
	for _, o := range p.pool {
		if o.tmp != "" {
			os.Remove(o.tmp)
			o.tmp = ""
		}
	}
}

// linkJob links the objects the host's chroot lacks, and renames the
// secrets into place.
func (p *Publisher) linkJob(j *hostJob) error {
	for i := len(j.stages) - 1; i >= 0; i-- {
		if err := j.stages[i].commit(); err != nil {
			return err
		}
	}
	j.stages = nil
	made := map[string]bool{}
	if len(j.objs) > 0 {
		if err := p.ensureDir(filepath.Join(j.hostDir, manifest.ObjectsDir), 0, 0, p.asRoot); err != nil {
			return err
		}
	}
	for _, o := range j.objs {
		dst := filepath.Join(j.hostDir, filepath.FromSlash(manifest.ObjectPath(o.sum)))
		created, err := p.linkObject(o, dst, made)
		if err != nil {
			return fmt.Errorf("linking object %s: %w", o.sum, err)
		}
		if !created {
			// Kept by retention from an earlier manifest.
			j.res.Shared--
			j.res.Linked++
		}
	}
	return nil
}

// syncJobs flushes the file systems the writing jobs live on (one
// syncfs(2) per file system, the pool's too when pool); a job whose file
// system failed to flush fails, with nothing of it live yet or, after the
// manifest rename, with its new manifest live but maybe not durable.
func (p *Publisher) syncJobs(jobs []*hostJob, what string, pool bool) {
	byDev, dirs := p.devices(jobs, pool)
	for dev, d := range dirs {
		if err := syncFS(d); err != nil {
			failUnsynced(jobs, byDev[dev], pool, what, err)
		}
	}
}

// devices groups the writing jobs by the file system of their chroot,
// with a directory on each to flush it by (the root, for the pool's,
// when pool). A job whose chroot cannot be stat'ed fails.
func (p *Publisher) devices(jobs []*hostJob, pool bool) (map[uint64][]*hostJob, map[uint64]string) {
	byDev := map[uint64][]*hostJob{}
	dirs := map[uint64]string{}
	if pool {
		var st syscall.Stat_t
		if err := syscall.Stat(p.root, &st); err == nil {
			dirs[uint64(st.Dev)] = p.root
		}
	}
	for _, j := range jobs {
		if !j.writing() {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(j.hostDir, &st); err != nil {
			j.fail(err)
			continue
		}
		dev := uint64(st.Dev)
		byDev[dev] = append(byDev[dev], j)
		dirs[dev] = j.hostDir
	}
	return byDev, dirs
}

// failUnsynced fails, for a file system that did not flush (err), the
// writing jobs on it (onDev), or every writing job when the pool's
// flush was asked for.
func failUnsynced(jobs, onDev []*hostJob, pool bool, what string, err error) {
	for _, j := range jobs {
		if j.writing() && (pool || containsJob(onDev, j)) {
			j.fail(fmt.Errorf("%s: syncfs: %w", what, err))
		}
	}
}

func containsJob(js []*hostJob, j *hostJob) bool {
	for _, x := range js {
		if x == j {
			return true
		}
	}
	return false
}

func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// writeManifestTemp writes m beside manifest.json under a temporary name,
// for Publish to sync and rename over the old one. The JSON is compact
// with one file per line: clients fetch it on every change, and every
// byte of indentation is paid by every host.
//
// With a key, the manifest is signed (manifest.Sign), and m.Signature set
// to what the file carries.
func writeManifestTemp(hostDir string, m *manifest.Manifest, key *manifest.SigningKey) (string, int64, error) {
	m.Signature = nil
	data, err := json.Marshal(m)
	if err != nil {
		return "", 0, err
	}
	// In compact JSON a quote inside a string is escaped, so these
	// sequences can only be the structure of the file list.
	data = bytes.ReplaceAll(data, []byte(`[{"path":`), []byte("[\n{\"path\":"))
	data = bytes.ReplaceAll(data, []byte(`},{"path":`), []byte("},\n{\"path\":"))
	data = append(data, '\n')
	if key != nil {
		if data, err = manifest.Sign(data, *key); err != nil {
			return "", 0, err
		}
		_, m.Signature, _ = manifest.Split(data)
	}
	f, err := os.CreateTemp(hostDir, "."+manifest.ManifestFile+".tmp-")
	if err != nil {
		return "", 0, err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", 0, err
	}
	return f.Name(), int64(len(data)), nil
}

// removeStaleTemps removes the temporary manifests a crashed deploy left
// (we hold the lock, so none is being written).
func removeStaleTemps(hostDir string) {
	stale, _ := filepath.Glob(filepath.Join(hostDir, "."+manifest.ManifestFile+".tmp-*"))
	for _, f := range stale {
		os.Remove(f)
	}
}
