package publish

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/manifest"
)

// hostJob is one host on its way through Publish.
type hostJob struct {
	name    string
	hostDir string
	res     Result
	m       *manifest.Manifest
	cur     *manifest.Manifest
	hist    *history
	// histChanged: loading the record repaired it; it is saved even when
	// nothing is published.
	histChanged bool
	// objs are the objects the chroot lacks (per the live manifest).
	objs   []*object
	stages []*staged
	// tmpManifest is the new manifest under its temporary name.
	tmpManifest string
}

func (j *hostJob) fail(err error) *hostJob {
	j.res.Err = err
	for _, s := range j.stages {
		s.discard()
	}
	j.stages = nil
	if j.tmpManifest != "" {
		os.Remove(j.tmpManifest)
		j.tmpManifest = ""
	}
	return j
}

// writing tells whether the job still has something to put in place.
func (j *hostJob) writing() bool {
	return j.res.Err == nil && j.published()
}

// prepare decides what a host needs and, unless in a dry run, writes the
// new contents into the pool under temporary names (not yet durable).
func (p *Publisher) prepare(ctx context.Context, t Target) *hostJob {
	name := t.Host.Name
	j := &hostJob{name: name, res: Result{Host: name, DryRun: p.opts.DryRun, ExpectedToplevel: t.ExpectedToplevel}}
	files, entries, err := p.readTarget(ctx, t, j)
	if err != nil {
		return j.fail(err)
	}
	j.hostDir = filepath.Join(p.root, name)
	acct, err := p.checkHostDir(t, j.hostDir)
	if err != nil {
		return j.fail(err)
	}
	curFiles, curObjects := p.readLive(j)
	j.m = p.newManifest(t, j.res.Version, files)
	p.decide(j, t, curObjects)
	have := p.liveObjects(j, curFiles, curObjects)
	if p.opts.DryRun {
		if j.res.Status == StatusPublished {
			p.planObjects(j, entries, have)
		}
		return j
	}
	var notes []string
	j.hist, notes, j.histChanged = p.loadHistory(name, j.hostDir, j.cur, curObjects, p.opts.Now())
	j.res.Notes = append(j.res.Notes, notes...)
	if err := p.ensureLayout(j.hostDir, acct); err != nil {
		return j.fail(err)
	}
	if j.res.Status != StatusPublished {
		return j
	}
	if err := p.stage(ctx, j, t.Extra, entries, have); err != nil {
		return j.fail(err)
	}
	return j
}

// readTarget reads the host's tree and names its version: the manifest
// lines it ships and the files behind them.
func (p *Publisher) readTarget(ctx context.Context, t Target, j *hostJob) ([]manifest.File, []Entry, error) {
	if err := fleet.ValidateName(t.Host.Name); err != nil {
		return nil, nil, err
	}
	if err := CheckHostName(t.Host.Name); err != nil {
		return nil, nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	tree, err := p.Tree(ctx, t.Source)
	if err != nil {
		return nil, nil, err
	}
	j.res.Notes = tree.Notes
	// The version is the tree's hash for every mode, so that a change of
	// the flake is a new version for a fetch-mode host too; but a host in
	// fetch mode evaluates nothing, so it receives none of the tree: no
	// host can read the fleet's configuration through it.
	files, version := p.treeVersion(tree, t.Extra.files())
	entries := tree.Files
	if t.Host.Options.Mode == manifest.ModeFetch {
		files, entries = []manifest.File{}, nil
	}
	j.res.Version, j.res.Files = version, len(files)
	return files, entries, nil
}

// files are the extra files' manifest lines (none for no Extra).
func (x *Extra) files() []manifest.File {
	if x == nil {
		return nil
	}
	return x.Files
}

// checkHostDir refuses a chroot that is not a directory, and looks up the
// host's SFTP account when reports/ is given to it.
func (p *Publisher) checkHostDir(t Target, hostDir string) (*account, error) {
	if fi, err := os.Lstat(hostDir); err == nil && !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory (%s); refusing to publish through it: remove it", hostDir, fi.Mode().Type())
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if !p.opts.Users {
		return nil, nil
	}
	a, err := lookupAccount(t.Host.Options.User, hostDir)
	if err != nil {
		return nil, err
	}
	return &a, nil
}

// readLive finds the host's live manifest (j.cur), returning its
// undecoded files when they were read and whether it names objects.
//
// Only the head of the live manifest is decoded at first: that is all
// an unchanged host needs, and decoding every host's file list would
// be most of an unchanged deploy's time.
// Faster still: the retention record keeps the head of the manifest
// it saw go live, with the file's identity; while the file is that
// very file, nothing is read from it.
func (p *Publisher) readLive(j *hostJob) (manifestFiles, bool) {
	var curFiles manifestFiles
	var curErr error
	cur, curObjects, known := p.liveHead(j.name, j.hostDir)
	if !known {
		cur, curFiles, curErr = readManifestHead(j.hostDir, j.name)
		curObjects = cur != nil && cur.Format >= 2 && len(curFiles) > 0
	}
	if curErr != nil {
		j.res.Notes = append(j.res.Notes, fmt.Sprintf("the current manifest is unreadable (%v): publishing afresh", curErr))
	}
	j.cur = cur
	if cur != nil {
		j.res.Previous = cur.Version
	}
	return curFiles, curObjects
}

// newManifest is the manifest a publication of t writes.
func (p *Publisher) newManifest(t Target, version string, files []manifest.File) *manifest.Manifest {
	return &manifest.Manifest{
		Format:             writeFormat,
		Host:               t.Host.Name,
		Version:            version,
		ExpectedToplevel:   t.ExpectedToplevel,
		Flake:              flakeOf(t.Host),
		Files:              files,
		Secrets:            t.Extra.files(),
		Cache:              t.Cache,
		Interval:           t.Host.Options.Interval,
		NextPublicationKey: p.opts.NextPublicationKey,
	}
}

// decide sets the job's status from the live manifest: unchanged, the
// same version with new metadata (updated), or a new version (published).
func (p *Publisher) decide(j *hostJob, t Target, curObjects bool) {
	cur, res := j.cur, &j.res
	live := cur != nil && cur.Format == writeFormat && cur.Version == j.m.Version && curObjects == hasObjects(j.m) &&
		(t.Extra == nil || isDir(filepath.Join(j.hostDir, manifest.SecretsDir, j.m.Version)))
	switch {
	case live && p.sameMeta(cur, j.m):
		res.Status = StatusUnchanged
		res.Previous = ""
		res.ExpectedToplevel = cur.ExpectedToplevel
	case live:
		res.Status = StatusUpdated
	default:
		res.Status = StatusPublished
	}
}

// liveObjects are the objects the live manifest names: they are in the
// chroot, and nothing removes them. Same version and format, same files:
// every host of a flake shares its previous version, which is decoded
// once.
func (p *Publisher) liveObjects(j *hostJob, curFiles manifestFiles, curObjects bool) map[string]bool {
	if !curObjects || j.res.Status != StatusPublished {
		return map[string]bool{}
	}
	p.copiesMu.Lock()
	sums, ok := p.copies[j.cur.Version]
	p.copiesMu.Unlock()
	if ok {
		return nonNil(sums)
	}
	if curFiles == nil {
		curFiles, _ = readCapped(filepath.Join(j.hostDir, manifest.ManifestFile), manifest.MaxSize)
	}
	files := curFiles.all()
	if files == nil {
		return map[string]bool{}
	}
	sums = make(map[string]bool, len(files))
	for _, f := range files {
		sums[f.SHA256] = true
	}
	p.copiesMu.Lock()
	p.copies[j.cur.Version] = sums
	p.copiesMu.Unlock()
	return sums
}

func nonNil(m map[string]bool) map[string]bool {
	if m == nil {
		return map[string]bool{}
	}
	return m
}

// planObjects counts what a publication would write (dry run).
func (p *Publisher) planObjects(j *hostJob, entries []Entry, have map[string]bool) {
	seen := map[string]bool{}
	for _, e := range entries {
		if seen[e.SHA256] {
			continue
		}
		seen[e.SHA256] = true
		if have[e.SHA256] || exists(filepath.Join(j.hostDir, filepath.FromSlash(manifest.ObjectPath(e.SHA256)))) {
			j.res.Linked++
			continue
		}
		o, mine := p.objectFor(e.SHA256, e.Size)
		if mine && !exists(o.final) {
			j.res.Copied++
			j.res.BytesWritten += e.Size
			continue
		}
		j.res.Shared++
	}
}

// objectPresent tells whether the chroot at hostDir holds the object sum
// as a regular file.
func objectPresent(hostDir, sum string) bool {
	fi, err := os.Lstat(filepath.Join(hostDir, filepath.FromSlash(manifest.ObjectPath(sum))))
	return err == nil && fi.Mode().IsRegular()
}

func flakeOf(h fleet.Host) manifest.Flake {
	if h.Layout == fleet.LayoutClassic {
		// The tree's root is the host's directory: the client builds its
		// configuration.nix; there is no attribute to name.
		return manifest.Flake{Layout: string(fleet.LayoutClassic)}
	}
	return manifest.Flake{Attr: fleet.ConfigAttr(h.Name), Layout: string(fleet.LayoutFlake)}
}

// sameMeta tells whether publishing m over cur (same version) would change
// nothing a client or bento status reads. An unknown expected system
// (--no-build) keeps the known one.
func (p *Publisher) sameMeta(cur, m *manifest.Manifest) bool {
	return cur.Host == m.Host && cur.NextPublicationKey == m.NextPublicationKey && p.signedAsWanted(cur) && cur.Flake == m.Flake && sameCache(cur.Cache, m.Cache) && cur.Interval == m.Interval &&
		(m.ExpectedToplevel == "" || m.ExpectedToplevel == cur.ExpectedToplevel)
}

// signedAsWanted tells whether the live manifest carries the signature
// this deploy would give it: none without a key, else the key's. A key
// added, changed or removed rewrites every manifest (a new sequence and
// signature, same version).
func (p *Publisher) signedAsWanted(cur *manifest.Manifest) bool {
	if p.opts.SigningKey == nil {
		return cur.Signature == nil
	}
	return cur.Signature != nil && cur.Signature.Key == p.opts.SigningKey.Public().String() && cur.Sequence > 0
}

func sameCache(a, b *manifest.Cache) bool {
	return a == nil && b == nil || a != nil && b != nil && *a == *b
}

func isDir(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.IsDir()
}

// readManifestHead returns the host's current manifest without its files
// (nil when there is none), and its bytes for decoding them when needed
// (nil when it names no file).
func readManifestHead(hostDir, host string) (*manifest.Manifest, manifestFiles, error) {
	data, err := readCapped(filepath.Join(hostDir, manifest.ManifestFile), manifest.MaxSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	var head struct {
		manifest.Manifest
		// Shadows Manifest.Files: kept raw, decoded only when needed.
		Files json.RawMessage `json:"files"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, nil, fmt.Errorf("manifest: invalid JSON: %w", err)
	}
	m := &head.Manifest
	if err := m.Validate(); err != nil {
		return nil, nil, err
	}
	if m.Host != host {
		return nil, nil, fmt.Errorf("it names host %q", m.Host)
	}
	raw := bytes.TrimSpace(head.Files)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) || bytes.Equal(raw, []byte("[]")) {
		return m, nil, nil
	}
	return m, manifestFiles(data), nil
}

// manifestFiles is a whole manifest whose files were not decoded yet;
// ranging over it decodes and validates them (and yields nothing when
// that fails: the chroot then gets everything linked anew).
type manifestFiles []byte

func (mf manifestFiles) all() []manifest.File {
	m, err := manifest.Parse(mf)
	if err != nil {
		return nil
	}
	return m.Files
}
