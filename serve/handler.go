package serve

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/status/render"
)

//go:embed assets
var assets embed.FS

// csp allows the page its own stylesheet, script and event stream, and
// nothing else: no inline script or style, no frame, no form, no base.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// waitFirst bounds how long a request waits for the first collection.
const waitFirst = 30 * time.Second

// Handler serves the pages, the API and the metrics. Every route is
// GET (and HEAD): nothing here changes the fleet.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "assets/static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", staticHandler(http.FileServerFS(static))))
	mux.HandleFunc("GET /{$}", s.fleetPage)
	mux.HandleFunc("GET /live/fleet", s.fleetFragment)
	mux.HandleFunc("GET /host/{name}", s.hostPage)
	mux.HandleFunc("GET /live/host/{name}", s.hostFragment)
	mux.HandleFunc("GET /events", s.events)
	mux.HandleFunc("GET /api/status", s.apiStatus)
	mux.HandleFunc("GET /api/history", s.apiHistory)
	reg := prometheus.NewRegistry()
	reg.MustRegister(metricsCollector{s})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slogPrinter{s}}))
	return securityHeaders(mux)
}

// securityHeaders sets, on every answer, the headers that keep the page
// to itself.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", csp)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Cross-Origin-Opener-Policy", "same-origin")
		hd.Set("Cross-Origin-Resource-Policy", "same-origin")
		h.ServeHTTP(w, r)
	})
}

func staticHandler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Embedded: they change with the binary only.
		w.Header().Set("Cache-Control", "public, max-age=3600")
		h.ServeHTTP(w, r)
	})
}

// snapshot is the latest snapshot, or an error answer already written.
func (s *Server) snapshot(w http.ResponseWriter, r *http.Request) (view, bool) {
	ctx, cancel := context.WithTimeout(r.Context(), waitFirst)
	defer cancel()
	v, err := s.current(ctx)
	if err != nil {
		w.Header().Set("Retry-After", "2")
		http.Error(w, err.Error()+": try again in a moment", http.StatusServiceUnavailable)
		return v, false
	}
	return v, true
}

// apiStatus is bento status --json for every host, as last collected.
func (s *Server) apiStatus(w http.ResponseWriter, r *http.Request) {
	v, ok := s.snapshot(w, r)
	if !ok {
		return
	}
	if v.snap == nil {
		http.Error(w, "status: "+v.err.Error(), http.StatusInternalServerError)
		return
	}
	s.serveCached(w, r, v.gen, "application/json", func(b *bytes.Buffer) error { return render.JSON(b, v.snap) })
}

// apiHistory is bento history --json: ?host= (repeated) selects hosts by
// name, ?since= is an RFC 3339 time, ?limit= the newest events kept
// (default 200, as the command's; 0 for all).
func (s *Server) apiHistory(w http.ResponseWriter, r *http.Request) {
	if s.o.History == nil {
		http.Error(w, "no history: bento serve could not open its history database (its log says why)", http.StatusNotFound)
		return
	}
	q := r.URL.Query()
	var since time.Time
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			http.Error(w, fmt.Sprintf("since=%q: give a time as 2026-01-02T15:04:05Z", v), http.StatusBadRequest)
			return
		}
		since = t
	}
	limit := 200
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			http.Error(w, fmt.Sprintf("limit=%q: give a number of events (0 for all)", v), http.StatusBadRequest)
			return
		}
		limit = n
	}
	hosts := q["host"]
	for _, h := range hosts {
		if err := fleet.ValidateName(h); err != nil {
			http.Error(w, fmt.Sprintf("host=%q is no host name", h), http.StatusBadRequest)
			return
		}
	}
	var b bytes.Buffer
	if err := s.o.History.JSON(r.Context(), &b, hosts, since, limit); err != nil {
		s.o.Log.Error("serve: /api/history", "err", err)
		http.Error(w, "history: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b.Bytes())
}

// events streams one "change" event per snapshot (its id is the
// snapshot's number), from the one the client does not have yet. A page
// fetches its view again on each; all streams wait on the one watch.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming is not supported here", http.StatusInternalServerError)
		return
	}
	select {
	case s.streams <- struct{}{}:
		defer func() { <-s.streams }()
	default:
		w.Header().Set("Retry-After", "10")
		http.Error(w, "too many open event streams", http.StatusServiceUnavailable)
		return
	}
	have := lastEventID(r)
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-store")
	// The browser reconnects after this many milliseconds.
	fmt.Fprint(w, "retry: 2000\n\n")
	flusher.Flush()
	s.stream(r.Context(), w, flusher, have)
}

// lastEventID is the snapshot a client has: the Last-Event-ID of a
// reconnecting stream, else the page's ?gen=, else 0.
func lastEventID(r *http.Request) uint64 {
	have, _ := strconv.ParseUint(r.Header.Get("Last-Event-ID"), 10, 64)
	if q := r.URL.Query().Get("gen"); q != "" && have == 0 {
		have, _ = strconv.ParseUint(q, 10, 64)
	}
	return have
}

// stream writes a "change" event whenever the snapshot is newer than the
// client's (have), until the client goes or the server stops.
func (s *Server) stream(ctx context.Context, w io.Writer, flusher http.Flusher, have uint64) {
	keepalive := time.NewTicker(30 * time.Second)
	defer keepalive.Stop()
	for {
		v := s.hub.get()
		if v.gen != have && v.gen > 0 {
			if _, err := fmt.Fprintf(w, "id: %d\nevent: change\ndata: %d\n\n", v.gen, v.gen); err != nil {
				return
			}
			flusher.Flush()
			have = v.gen
		}
		if !s.await(ctx, w, flusher, v.changed, keepalive) {
			return
		}
	}
}

// await waits for the snapshot to change or for the time to write a
// keepalive comment; it is false once the stream must end.
func (s *Server) await(ctx context.Context, w io.Writer, flusher http.Flusher, changed <-chan struct{}, keepalive *time.Ticker) bool {
	select {
	case <-changed:
	case <-keepalive.C:
		// A comment keeps proxies (ssh -L is fine) from closing it.
		if _, err := fmt.Fprint(w, ": keepalive\n\n"); err != nil {
			return false
		}
		flusher.Flush()
	case <-ctx.Done():
		return false
	case <-s.done:
		return false
	}
	return true
}

// slogPrinter hands promhttp's errors to the server's log.
type slogPrinter struct{ s *Server }

func (p slogPrinter) Println(v ...any) { p.s.o.Log.Error("serve: /metrics", "err", fmt.Sprint(v...)) }
