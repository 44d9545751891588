package serve

import (
	"bytes"
	"compress/gzip"
	"net/http"
	"strings"
	"sync"
)

// maxCached bounds the answers kept for one snapshot: a view per filter
// someone asked for, each page, each encoding.
const maxCached = 64

// answers keeps the answers rendered from the current snapshot: every
// client fetches its view again after each change, most of them the same
// one, so it is rendered (and compressed) once per snapshot, not once per
// client. A new snapshot empties it.
type answers struct {
	mu      sync.Mutex
	gen     uint64
	entries map[string][]byte
}

func (a *answers) get(gen uint64, key string) ([]byte, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.gen != gen {
		return nil, false
	}
	b, ok := a.entries[key]
	return b, ok
}

func (a *answers) put(gen uint64, key string, b []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case gen < a.gen:
		return // rendered from an older snapshot: never shown again
	case gen > a.gen || len(a.entries) >= maxCached:
		a.gen, a.entries = gen, map[string][]byte{}
	}
	a.entries[key] = b
}

// serveCached writes the answer of this request for snapshot gen, made by
// render (into memory, so that a failure is an error answer rather than
// half a page) unless the cache has it; gzipped when the client takes it.
func (s *Server) serveCached(w http.ResponseWriter, r *http.Request, gen uint64, contentType string, render func(*bytes.Buffer) error) {
	gz := strings.Contains(r.Header.Get("Accept-Encoding"), "gzip")
	key := r.URL.Path + "?" + r.URL.RawQuery
	if gz {
		key += "\x00gzip"
	}
	body, ok := s.answers.get(gen, key)
	if !ok {
		var b bytes.Buffer
		if err := render(&b); err != nil {
			s.o.Log.Error("serve: rendering", "path", r.URL.Path, "err", err)
			http.Error(w, "rendering "+r.URL.Path+" failed: "+err.Error(), http.StatusInternalServerError)
			return
		}
		body = b.Bytes()
		if gz {
			var z bytes.Buffer
			zw, _ := gzip.NewWriterLevel(&z, gzip.BestSpeed)
			zw.Write(body)
			zw.Close()
			body = z.Bytes()
		}
		s.answers.put(gen, key, body)
	}
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Cache-Control", "no-store")
	h.Set("Vary", "Accept-Encoding")
	if gz {
		h.Set("Content-Encoding", "gzip")
	}
	w.Write(body)
}
