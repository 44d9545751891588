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
		switch key {
		case "files", "secrets":
			return h, h.Version != ""
		case "format":
			if dec.Decode(&h.Format) != nil {
				return h, false
			}
		case "host":
			if dec.Decode(&h.Host) != nil {
				return h, false
			}
		case "version":
			if dec.Decode(&h.Version) != nil {
				return h, false
			}
		case "sequence":
			if dec.Decode(&h.Sequence) != nil {
				return h, false
			}
		case "expectedToplevel":
			if dec.Decode(&h.Expected) != nil {
				return h, false
			}
		default:
			var skip json.RawMessage
			if dec.Decode(&skip) != nil {
				return h, false
			}
		}
	}
}
