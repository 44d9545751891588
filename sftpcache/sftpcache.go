// Package sftpcache lets Nix substitute from the host's own SFTP chroot.
// The agent serves a tiny HTTP binary cache on 127.0.0.1 for the length of
// a tick; every request Nix makes (nix-cache-info, a narinfo, a NAR) is
// read from the chroot's cache directory through the SFTP session, as Nix
// asks for it. Nothing is mirrored in advance, so Nix downloads only the
// paths the host lacks, and the server runs nothing but its sshd.
//
// Nix, not this package, decides what enters the store: it checks every
// narinfo's signature and every NAR's hash. The handler checks the same
// things as it serves, only to say in the host's report which file was
// tampered with, where Nix would just say that no substituter has the path.
package sftpcache

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"path"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/sftp"

	"github.com/bento-nix/bento/cache/narinfo"
	"github.com/bento-nix/bento/manifest"
)

// Options configure a Handler.
type Options struct {
	// Log receives one debug line per request and a warning per failure;
	// nil discards.
	Log *slog.Logger
	// PublicKeys are the keys the fleet signs with (manifest.Cache's). With
	// them the handler records every narinfo none of them signed as a
	// Problem; without them only NAR contents are checked.
	PublicKeys []narinfo.PublicKey
}

// Stats count what went through the tunnel.
type Stats struct {
	// Bytes is everything read from the server: narinfos, NARs, nix-cache-info.
	Bytes int64 `json:"bytes"`
	// Narinfos and NARs count files served; NARBytes is the NARs' share of Bytes.
	Narinfos int   `json:"narinfos"`
	NARs     int   `json:"nars"`
	NARBytes int64 `json:"narBytes"`
}

// Handler serves a Nix binary cache read from dir through an SFTP session.
type Handler struct {
	c    *sftp.Client
	dir  string
	log  *slog.Logger
	keys []narinfo.PublicKey

	bytes, narBytes atomic.Int64
	narinfos, nars  atomic.Int64

	mu       sync.Mutex
	problems map[string]bool
}

// NewHandler serves the binary cache at dir (relative to the SFTP
// session's start, e.g. "cache" in a chroot) read through c.
func NewHandler(c *sftp.Client, dir string, opts Options) *Handler {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Handler{c: c, dir: dir, log: log, keys: opts.PublicKeys, problems: map[string]bool{}}
}

// Stats returns what has been transferred so far.
func (h *Handler) Stats() Stats {
	return Stats{
		Bytes:    h.bytes.Load(),
		Narinfos: int(h.narinfos.Load()),
		NARs:     int(h.nars.Load()),
		NARBytes: h.narBytes.Load(),
	}
}

// Problems lists, sorted, the served files that failed a check: a narinfo
// no trusted key signed, a NAR whose content does not match its name.
func (h *Handler) Problems() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]string, 0, len(h.problems))
	for p := range h.problems {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// ErrTampered is wrapped by Explain when the handler served files that
// failed its checks.
var ErrTampered = errors.New("the server's binary cache for this host holds files that fail verification (altered on the server, or signed with a key the host does not trust)")

// Explain adds the handler's Problems to err, the error of the Nix command
// that used this cache, so a report says which file was refused and why.
// It returns err unchanged when nothing failed a check.
func (h *Handler) Explain(err error) error {
	ps := h.Problems()
	if err == nil || len(ps) == 0 {
		return err
	}
	return fmt.Errorf("%w; %w: %s", err, ErrTampered, strings.Join(ps, "; "))
}

func (h *Handler) problem(s string) {
	h.log.Warn("binary cache: "+s, "dir", h.dir)
	h.mu.Lock()
	h.problems[s] = true
	h.mu.Unlock()
}

type kind int

const (
	kindInfo kind = iota + 1
	kindNarinfo
	kindNAR
)

// classify accepts exactly the three shapes of request Nix makes of a
// binary cache and returns the file's path relative to the cache root.
// Everything else, including any path with "..", is not found: the
// handler must never become a way to read the rest of the chroot.
func classify(p string) (string, kind) {
	switch {
	case p == "/"+narinfo.CacheInfoFile:
		return narinfo.CacheInfoFile, kindInfo
	case strings.HasPrefix(p, "/nar/"):
		name := p[len("/nar/"):]
		if narinfo.ValidNARName(name) {
			return "nar/" + name, kindNAR
		}
	case strings.HasSuffix(p, ".narinfo"):
		hash := p[1 : len(p)-len(".narinfo")]
		if narinfo.ValidHashPart(hash) {
			return hash + ".narinfo", kindNarinfo
		}
	}
	return "", 0
}

// contentType is what each kind of file is served as.
var contentType = map[kind]string{
	kindInfo:    "text/x-nix-cache-info",
	kindNarinfo: "text/x-nix-narinfo",
	kindNAR:     "application/x-nix-nar",
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	rel, k := classify(r.URL.Path)
	if k == 0 {
		http.NotFound(w, r)
		return
	}
	f, err := h.c.Open(path.Join(h.dir, rel))
	if err != nil {
		h.fail(w, r, rel, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		h.fail(w, r, rel, err)
		return
	}
	if !fi.Mode().IsRegular() {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", contentType[k])
	if k == kindNAR {
		h.serveNAR(w, r, rel, f, fi.Size())
	} else {
		h.serveSmall(w, r, rel, k, f)
	}
}

// serveSmall serves nix-cache-info or a narinfo: read whole, so a narinfo
// can be checked before it is sent.
func (h *Handler) serveSmall(w http.ResponseWriter, r *http.Request, rel string, k kind, f io.Reader) {
	data, err := io.ReadAll(io.LimitReader(f, narinfo.MaxSize+1))
	h.bytes.Add(int64(len(data)))
	if err != nil {
		h.fail(w, r, rel, err)
		return
	}
	if k == kindNarinfo {
		h.narinfos.Add(1)
		h.checkNarinfo(rel, data)
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(data)))
	if r.Method == http.MethodGet {
		w.Write(data)
	}
	h.log.Debug("binary cache: served", "file", rel, "bytes", len(data))
}

// serveNAR streams a NAR, hashing it on the way: a whole NAR whose hash is
// not its name is recorded as a problem.
func (h *Handler) serveNAR(w http.ResponseWriter, r *http.Request, rel string, f io.Reader, size int64) {
	w.Header().Set("Content-Length", fmt.Sprint(size))
	if r.Method == http.MethodHead {
		return
	}
	h.nars.Add(1)
	sum := sha256.New()
	// io.Copy uses the SFTP file's WriteTo, which keeps many reads in
	// flight: one round trip per file rather than per 32 KiB.
	n, err := io.Copy(&counter{w: w, sum: sum, total: &h.bytes, nar: &h.narBytes}, f)
	if err != nil {
		// The status line is gone; a short body makes Nix retry.
		h.log.Warn("binary cache: transfer failed", "file", rel, "after", n, "err", err)
		return
	}
	if n == size {
		stem := strings.TrimPrefix(rel, "nar/")
		stem = stem[:strings.Index(stem, ".nar")]
		if got := narinfo.Base32(sum.Sum(nil)); got != stem {
			h.problem(fmt.Sprintf("%s: content does not match its name (sha256 %s)", rel, got))
		}
	}
	h.log.Debug("binary cache: served", "file", rel, "bytes", n)
}

// checkNarinfo records why a narinfo Nix is about to judge would fail.
func (h *Handler) checkNarinfo(rel string, data []byte) {
	in, err := narinfo.Parse(data)
	if err != nil {
		h.problem(fmt.Sprintf("%s: %v", rel, err))
		return
	}
	if hp, _ := narinfo.HashPart(in.StorePath); hp+".narinfo" != rel {
		h.problem(fmt.Sprintf("%s: describes another path, %s", rel, in.StorePath))
		return
	}
	if len(h.keys) == 0 {
		return
	}
	if err := in.Verify(h.keys); err != nil {
		h.problem(fmt.Sprintf("%s: %v", rel, err))
	}
}

// fail answers a request whose file could not be read: 404 when it does
// not exist (Nix's "not in this cache"), 502 when the server is the
// problem, so that Nix reports an error instead of building or giving up
// quietly.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, rel string, err error) {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
		h.log.Debug("binary cache: not found", "file", rel)
		http.NotFound(w, r)
		return
	}
	h.log.Warn("binary cache: reading from the server failed", "file", rel, "err", err)
	http.Error(w, "reading from the bento server failed: "+err.Error(), http.StatusBadGateway)
}

// counter passes NAR bytes on to the response and counts them as they go,
// so a status view can show a transfer in progress.
type counter struct {
	w          io.Writer
	sum        hash.Hash
	total, nar *atomic.Int64
}

func (c *counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.sum.Write(p[:n])
	c.total.Add(int64(n))
	c.nar.Add(int64(n))
	return n, err
}

// Server is a Handler listening on 127.0.0.1.
type Server struct {
	*Handler
	// URL is the substituter to give Nix, http://127.0.0.1:<port>.
	URL string

	srv       *http.Server
	stopAfter func() bool
	done      chan struct{}
}

// Serve starts a Handler on a free port of 127.0.0.1. It stops when ctx
// ends or Close is called.
func Serve(ctx context.Context, c *sftp.Client, dir string, opts Options) (*Server, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("binary cache: listening on 127.0.0.1: %w", err)
	}
	h := NewHandler(c, dir, opts)
	s := &Server{
		Handler: h,
		URL:     "http://" + ln.Addr().String(),
		srv:     &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second},
		done:    make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.log.Warn("binary cache: server stopped", "err", err)
		}
	}()
	s.stopAfter = context.AfterFunc(ctx, func() { s.srv.Close() })
	return s, nil
}

// Close stops the server, ending transfers in progress.
func (s *Server) Close() error {
	s.stopAfter()
	err := s.srv.Close()
	<-s.done
	return err
}

// ServeManifest serves the cache a manifest announces, after checking
// that its directory stays inside the chroot and its key is well formed.
func ServeManifest(ctx context.Context, c *sftp.Client, mc *manifest.Cache, log *slog.Logger) (*Server, error) {
	if mc == nil {
		return nil, errors.New("the manifest announces no binary cache")
	}
	if err := manifest.ValidatePath(mc.Dir); err != nil {
		return nil, fmt.Errorf("manifest cache: %w", err)
	}
	var keys []narinfo.PublicKey
	if mc.PublicKey != "" {
		k, err := narinfo.ParsePublicKey(mc.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("manifest cache: %w", err)
		}
		keys = append(keys, k)
	}
	return Serve(ctx, c, mc.Dir, Options{Log: log, PublicKeys: keys})
}
