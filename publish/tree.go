package publish

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/gitcmd"
	"github.com/bento-nix/bento/manifest"
)

// Source says which directory becomes a host's published tree and how its
// files are chosen.
type Source struct {
	// Root is the directory whose content becomes the top of the tree.
	Root string
	// Boundary is Root or an ancestor of it: symlinks must resolve inside
	// it. The classic layout needs it (hosts/x/utils -> ../../utils).
	Boundary string
	// Plain ships every file under Root, as Nix does for path: flakes and
	// classic configurations. Otherwise, when Root is inside a git work
	// tree, only files git tracks ship, as Nix does for git flakes.
	Plain bool
}

// SourceFor returns the source of host h of a fleet whose local directory
// is dir (fleet.Fleet.Dir).
func SourceFor(h fleet.Host, dir string) (Source, error) {
	if dir == "" {
		return Source{}, fmt.Errorf("the fleet %s is not a local directory: bento deploy publishes a local checkout (clone it and pass --flake ./checkout)", h.Ref)
	}
	if h.Layout == fleet.LayoutClassic {
		// What Nix reads for a classic host is the files themselves: git
		// plays no part, so every file ships (as the original's rsync did).
		return Source{Root: filepath.Join(dir, "hosts", h.Name), Boundary: dir, Plain: true}, nil
	}
	return Source{Root: dir, Boundary: dir, Plain: strings.HasPrefix(h.Ref, "path:")}, nil
}

// Entry is one file of a tree: its manifest line and where its content is
// read from (symlinks already resolved).
type Entry struct {
	manifest.File
	Src string
}

// Tree is what ships for one source.
type Tree struct {
	Files []Entry
	// Notes are things the operator should know (untracked files left out,
	// submodules, result links, secrets/): none is an error.
	Notes []string
	// Size is the sum of the files' sizes.
	Size int64
}

// Manifest returns the manifest lines of the tree's files.
func (t *Tree) Manifest() []manifest.File {
	out := make([]manifest.File, len(t.Files))
	for i, e := range t.Files {
		out[i] = e.File
	}
	return out
}

// SecretsName is the directory next to the flake that never ships in
// config/: secrets are published separately, per host, into
// <root>/<host>/secrets/<version>/.
const SecretsName = "secrets"

// Modes of published files in the manifest: like the Nix store, only the
// executable bit survives, so a chmod g+w does not change the version.
const (
	ModeFile = 0o644
	ModeExec = 0o755
)

// TreeOptions tune ReadTree.
type TreeOptions struct {
	// Exclude lists directories that never ship (the chroot root when it
	// lies inside the fleet).
	Exclude []string
	// Hashes caches file hashes between trees that share files; may be nil.
	Hashes *HashCache
}

// ReadTree lists and hashes the files of src that a host receives.
func ReadTree(ctx context.Context, src Source, opts TreeOptions) (*Tree, error) {
	w, err := newWalker(ctx, src, opts)
	if err != nil {
		return nil, err
	}
	if !src.Plain {
		top, err := gitcmd.Top(ctx, w.realRoot)
		if err != nil {
			return nil, err
		}
		if top != "" {
			if err := w.readGit(); err != nil {
				return nil, err
			}
			return w.tree()
		}
	}
	if err := w.walkDir(w.realRoot, "", []string{w.realRoot}); err != nil {
		return nil, err
	}
	return w.tree()
}

// newWalker checks src's root and boundary and resolves them, with the
// exclusions, to real paths.
func newWalker(ctx context.Context, src Source, opts TreeOptions) (*walker, error) {
	root, err := treeRoot(src.Root)
	if err != nil {
		return nil, err
	}
	boundary := src.Boundary
	if boundary == "" {
		boundary = root
	}
	w := &walker{ctx: ctx, hashes: opts.Hashes, seen: map[string]bool{}}
	if w.hashes == nil {
		w.hashes = NewHashCache()
	}
	if w.realRoot, err = filepath.EvalSymlinks(root); err != nil {
		return nil, fmt.Errorf("tree %s: %w", root, err)
	}
	if w.boundary, err = filepath.EvalSymlinks(boundary); err != nil {
		return nil, fmt.Errorf("tree %s: %w", boundary, err)
	}
	if !within(w.realRoot, w.boundary) {
		return nil, fmt.Errorf("tree %s: not inside %s", root, boundary)
	}
	w.exclude = realPaths(opts.Exclude)
	return w, nil
}

// treeRoot is the absolute path of a tree's root, which must be a directory.
func treeRoot(dir string) (string, error) {
	root, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(root)
	if err != nil {
		return "", fmt.Errorf("tree %s: %w", root, err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("tree %s: not a directory", root)
	}
	return root, nil
}

// realPaths resolves each of paths; those that do not resolve (missing)
// are dropped.
func realPaths(paths []string) []string {
	var out []string
	for _, x := range paths {
		if rx, err := filepath.EvalSymlinks(x); err == nil {
			out = append(out, rx)
		}
	}
	return out
}

type walker struct {
	ctx      context.Context
	realRoot string
	boundary string
	exclude  []string
	hashes   *HashCache
	// tracked holds the git-tracked paths relative to realRoot (nil: plain).
	tracked map[string]bool
	files   []Entry
	seen    map[string]bool
	notes   []string
	// skipped counts what was left out, by reason, for one note each.
	resultLinks []string
	secrets     bool
	excluded    []string
}

func (w *walker) tree() (*Tree, error) {
	sort.Slice(w.files, func(i, j int) bool { return w.files[i].Path < w.files[j].Path })
	t := &Tree{Files: w.files, Notes: w.notes}
	if len(w.resultLinks) > 0 {
		t.Notes = append(t.Notes, fmt.Sprintf("left out %s: links into the Nix store made by nix build", list(w.resultLinks)))
	}
	if w.secrets {
		t.Notes = append(t.Notes, "left out secrets/: bento never publishes it inside config/ (secrets go to each host's secrets/ directory)")
	}
	if len(w.excluded) > 0 {
		t.Notes = append(t.Notes, fmt.Sprintf("left out %s: it holds the chroots", list(w.excluded)))
	}
	for _, e := range w.files {
		t.Size += e.Size
	}
	if len(t.Files) == 0 {
		if w.tracked != nil {
			return nil, fmt.Errorf("tree %s: git tracks no file there, and Nix sees only tracked files: git add them", w.realRoot)
		}
		return nil, fmt.Errorf("tree %s: no file to publish", w.realRoot)
	}
	return t, nil
}

func list(xs []string) string {
	if len(xs) > 5 {
		return strings.Join(xs[:5], ", ") + fmt.Sprintf(" and %d more", len(xs)-5)
	}
	return strings.Join(xs, ", ")
}

// readGit ships what Nix sees of a git flake: the files in git's index
// (committed or staged), read from the work tree; untracked files do not
// exist for Nix, and submodules are left out unless ?submodules=1.
func (w *walker) readGit() error {
	paths, submodules, err := gitcmd.Tracked(w.ctx, w.realRoot)
	if err != nil {
		return err
	}
	w.tracked = map[string]bool{}
	for _, p := range paths {
		w.tracked[p] = true
	}
	if len(submodules) > 0 {
		w.notes = append(w.notes, fmt.Sprintf("left out git submodule %s: Nix does not see submodules unless the flake URL says ?submodules=1", list(submodules)))
	}
	if err := w.addTracked(paths); err != nil {
		return err
	}
	w.noteUntracked()
	return nil
}

// addTracked ships the tracked paths (relative to the tree root).
func (w *walker) addTracked(paths []string) error {
	for _, p := range paths {
		if err := w.ctx.Err(); err != nil {
			return err
		}
		if skipTop(p) {
			if strings.HasPrefix(p, SecretsName+"/") {
				w.secrets = true
			}
			continue
		}
		full := filepath.Join(w.realRoot, filepath.FromSlash(p))
		if err := w.add(full, p, []string{w.realRoot}); err != nil {
			return err
		}
	}
	return nil
}

// noteUntracked notes the untracked files that would have shipped.
func (w *walker) noteUntracked() {
	// Only for a note: a git that cannot list them costs the note, not
	// the deploy.
	all, err := gitcmd.Untracked(w.ctx, w.realRoot)
	if err != nil {
		return
	}
	var untracked []string
	for _, p := range all {
		if skipTop(p) || w.excluded0(filepath.Join(w.realRoot, p)) {
			continue
		}
		untracked = append(untracked, p)
	}
	if len(untracked) > 0 {
		w.notes = append(w.notes, fmt.Sprintf("%d untracked file(s) not published, as Nix does not see them either: %s (git add them to publish them)", len(untracked), list(untracked)))
	}
}

// skipTop tells whether a path relative to the tree root never ships.
func skipTop(p string) bool {
	return p == SecretsName || strings.HasPrefix(p, SecretsName+"/")
}

func (w *walker) excluded0(p string) bool {
	for _, x := range w.exclude {
		if within(p, x) {
			return true
		}
	}
	return false
}

// add ships the file system object at full (not resolved) as rel. stack
// holds the real directories being walked, to detect symlink loops.
func (w *walker) add(full, rel string, stack []string) error {
	real, fi, err := w.resolve(full, rel)
	if err != nil || fi == nil {
		return err
	}
	if w.leftOut(real, rel) {
		return nil
	}
	switch {
	case fi.IsDir():
		if slices.Contains(stack, real) {
			return fmt.Errorf("tree: symlink %s makes a loop (it points to %s, which contains it); fix or remove it", rel, real)
		}
		return w.walkDir(real, rel, append(stack, real))
	case fi.Mode().IsRegular():
		if err := w.checkLinkTracked(full, real, rel); err != nil {
			return err
		}
		return w.addFile(real, rel, fi)
	default:
		return fmt.Errorf("tree: %s is a %s, not a file, directory or symlink; Nix cannot copy it: remove it", rel, fi.Mode().Type())
	}
}

// leftOut tells whether the real object real (shipped as rel) is left out:
// excluded or secrets, which it counts for the notes.
func (w *walker) leftOut(real, rel string) bool {
	if w.excluded0(real) {
		w.excluded = append(w.excluded, rel)
		return true
	}
	if within(real, filepath.Join(w.boundary, SecretsName)) || within(real, filepath.Join(w.realRoot, SecretsName)) {
		w.secrets = true
		return true
	}
	return false
}

// checkLinkTracked refuses, in a git tree, a file reached through a link
// (full resolving to real) whose target git does not track.
func (w *walker) checkLinkTracked(full, real, rel string) error {
	if w.tracked == nil || real == full {
		return nil
	}
	// A link into the tree is dereferenced: what it points to must
	// be something Nix sees, i.e. tracked.
	r, err := filepath.Rel(w.realRoot, real)
	if err != nil || !w.tracked[filepath.ToSlash(r)] {
		return fmt.Errorf("tree: symlink %s points to %s, which git does not track, so Nix does not see it; git add it", rel, real)
	}
	return nil
}

// resolve follows full to the real object inside the tree and stats it; a
// nil FileInfo with a nil error means the object does not ship (gone from
// the work tree, .git, or a nix build out link).
func (w *walker) resolve(full, rel string) (string, fs.FileInfo, error) {
	fi, err := os.Lstat(full)
	if errors.Is(err, fs.ErrNotExist) {
		// Deleted in the work tree but still in git's index: Nix copies
		// the work tree, so the file does not exist for it either.
		return "", nil, nil
	}
	if err != nil {
		return "", nil, fmt.Errorf("tree: %s: %w", rel, err)
	}
	if fi.Name() == ".git" {
		return "", nil, nil
	}
	isLink := fi.Mode()&fs.ModeSymlink != 0
	target := ""
	if isLink {
		target, _ = os.Readlink(full)
	}
	// Resolve every path, not only links: a directory of the work tree
	// replaced by a link must not smuggle in files from outside.
	real, err := filepath.EvalSymlinks(full)
	if err != nil {
		return "", nil, unresolvable(err, rel, target, isLink)
	}
	if !within(real, w.boundary) {
		// A nil error: a result link, left out.
		return "", nil, w.outside(real, rel, target, isLink)
	}
	if real != full {
		if fi, err = os.Stat(real); err != nil {
			return "", nil, fmt.Errorf("tree: %s: %w", rel, err)
		}
	}
	return real, fi, nil
}

// unresolvable is the error of a path (a link to target when isLink)
// that EvalSymlinks could not resolve.
func unresolvable(err error, rel, target string, isLink bool) error {
	switch {
	case isLoop(err):
		return fmt.Errorf("tree: symlink %s -> %s is a loop; fix or remove it", rel, target)
	case errors.Is(err, fs.ErrNotExist) && isLink:
		return fmt.Errorf("tree: symlink %s -> %s points to nothing; fix or remove it", rel, target)
	}
	return fmt.Errorf("tree: %s: %w", rel, err)
}

// outside is the error of a path that resolves (to real) outside the
// boundary; nil for a nix build out link, which it counts for the notes.
func (w *walker) outside(real, rel, target string, isLink bool) error {
	if isLink && isResultLink(path.Base(rel), target) {
		w.resultLinks = append(w.resultLinks, rel)
		return nil
	}
	what := "symlink " + rel + " -> " + target
	if !isLink {
		what = rel + " (through a symlinked directory)"
	}
	return fmt.Errorf("tree: %s escapes the tree (it resolves to %s, outside %s); copy what it points to into the fleet, or make it point inside", what, real, w.boundary)
}

func isLoop(err error) bool {
	return errors.Is(err, syscall.ELOOP) || strings.Contains(err.Error(), "too many links")
}

// isResultLink recognises the out links nix build leaves (result, result-man…).
func isResultLink(name, target string) bool {
	return (name == "result" || strings.HasPrefix(name, "result-")) && strings.HasPrefix(target, "/nix/store/")
}

// walkDir ships the content of the real directory dir as rel.
func (w *walker) walkDir(dir, rel string, stack []string) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	if w.excluded0(dir) && rel != "" {
		w.excluded = append(w.excluded, rel)
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("tree: %s: %w", orDot(rel), err)
	}
	for _, e := range entries {
		if w.skipEntry(dir, rel, e) {
			continue
		}
		if err := w.add(filepath.Join(dir, e.Name()), joinRel(rel, e.Name()), stack); err != nil {
			return err
		}
	}
	return nil
}

// skipEntry tells whether the entry e of the real directory dir (shipped
// as rel) never ships: .git, the top secrets/ (counted for the notes), or
// a file git does not track.
func (w *walker) skipEntry(dir, rel string, e fs.DirEntry) bool {
	name := e.Name()
	if name == ".git" {
		return true
	}
	if rel == "" && name == SecretsName {
		w.secrets = true
		return true
	}
	if w.tracked == nil || e.IsDir() || e.Type()&fs.ModeSymlink != 0 {
		return false
	}
	// Inside a linked directory of a git tree: only tracked files.
	rr, err := filepath.Rel(w.realRoot, filepath.Join(dir, name))
	return err != nil || !w.tracked[filepath.ToSlash(rr)]
}

func (w *walker) addFile(real, rel string, fi fs.FileInfo) error {
	if err := manifest.ValidatePath(rel); err != nil {
		return fmt.Errorf("tree: %w", err)
	}
	if w.seen[rel] {
		return nil
	}
	sum, size, err := w.hashes.Sum(real, fi)
	if err != nil {
		return fmt.Errorf("tree: %s: %w", rel, err)
	}
	mode := uint32(ModeFile)
	if fi.Mode()&0o111 != 0 {
		mode = ModeExec
	}
	w.seen[rel] = true
	w.files = append(w.files, Entry{File: manifest.File{Path: rel, Mode: mode, Size: size, SHA256: sum}, Src: real})
	return nil
}

func joinRel(rel, name string) string {
	if rel == "" {
		return name
	}
	return rel + "/" + name
}

func orDot(rel string) string {
	if rel == "" {
		return "."
	}
	return rel
}

// within tells whether p is dir or below it (both clean and absolute).
func within(p, dir string) bool {
	if p == dir {
		return true
	}
	if dir == "/" {
		return strings.HasPrefix(p, "/")
	}
	return strings.HasPrefix(p, dir+"/")
}

// HashCache remembers file hashes by identity (device, inode, size, mtime,
// ctime), so that files shared by many trees (classic hosts linking the
// same utils/) are read once. Safe for concurrent use.
type HashCache struct {
	mu sync.Mutex
	m  map[fileKey]hashed
}

type fileKey struct {
	dev, ino       uint64
	size           int64
	mtime, ctime   int64
	mtimeN, ctimeN int64
}

type hashed struct {
	sum  string
	size int64
}

// NewHashCache returns an empty cache.
func NewHashCache() *HashCache { return &HashCache{m: map[fileKey]hashed{}} }

// Sum returns the sha256 (hex) and size of the regular file at p.
func (c *HashCache) Sum(p string, fi fs.FileInfo) (string, int64, error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	var key fileKey
	if ok {
		key = fileKey{uint64(st.Dev), st.Ino, st.Size, st.Mtim.Sec, st.Ctim.Sec, st.Mtim.Nsec, st.Ctim.Nsec}
		c.mu.Lock()
		h, hit := c.m[key]
		c.mu.Unlock()
		if hit {
			return h.sum, h.size, nil
		}
	}
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	hs := sha256.New()
	n, err := io.Copy(hs, f)
	if err != nil {
		return "", 0, err
	}
	sum := hex.EncodeToString(hs.Sum(nil))
	if ok {
		c.mu.Lock()
		c.m[key] = hashed{sum, n}
		c.mu.Unlock()
	}
	return sum, n, nil
}

// VersionLen is how many hex digits of the tree hash name a version: the
// manifest's.
const VersionLen = manifest.VersionLen

// Version is the content hash of a publication: the tree's files (path,
// mode, sha256, in path order) and, when any, the extra files published
// beside it (secrets). The same content always gives the same version.
func Version(files []manifest.File, extra []manifest.File) string {
	h := sha256.New()
	io.WriteString(h, "bento-publication-v1\n")
	write := func(list []manifest.File) {
		sorted := append([]manifest.File(nil), list...)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
		for _, f := range sorted {
			fmt.Fprintf(h, "%s\x00%o\x00%s\n", f.Path, f.Mode, f.SHA256)
		}
	}
	write(files)
	if len(extra) > 0 {
		io.WriteString(h, "extra\n")
		write(extra)
	}
	return hex.EncodeToString(h.Sum(nil))[:VersionLen]
}

type hasher struct{ h hash.Hash }

func newHasher() *hasher                      { return &hasher{sha256.New()} }
func (h *hasher) Write(p []byte) (int, error) { return h.h.Write(p) }
func (h *hasher) hex() string                 { return hex.EncodeToString(h.h.Sum(nil)) }
