package agent

import (
	"bytes"
	"encoding/json"
)

// manifestHead is what the top of manifest.json says: enough to tell
// whether anything changed without reading the list of files, which
// grows with the tree. The publisher writes these keys before "files".
type manifestHead struct {
	Format   int
	Host     string
	Version  string
	Expected string
	// Sequence is unverified here: it only says whether to read (and
	// verify) the whole manifest of an unchanged version.
	Sequence uint64
}

// parseHead reads the top-level keys of a manifest prefix up to "files"
// (or the end of the object). ok is false when the prefix ends before
// that: read more.
func parseHead(b []byte) (h manifestHead, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return h, false
	}
	for {
		t, err := dec.Token()
		if err != nil {
			return h, false
		}
		if t == json.Delim('}') {
			return h, true
		}
		key, _ := t.(string)
		if key == "files" || key == "secrets" {
			return h, h.Version != ""
		}
		if dec.Decode(h.field(key)) != nil {
			return h, false
		}
	}
}

// field is where the value of key goes: one of h's fields, or a value
// that is read and dropped for the keys the head does not keep.
func (h *manifestHead) field(key string) any {
	switch key {
	case "format":
		return &h.Format
	case "host":
		return &h.Host
	case "version":
		return &h.Version
	case "sequence":
		return &h.Sequence
	case "expectedToplevel":
		return &h.Expected
	}
	return new(json.RawMessage)
}
