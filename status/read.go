package status

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/tidwall/gjson"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/bytesize"
	"github.com/bento-nix/bento/manifest"
)

// MaxReportSize is the largest status.json bento status reads. A report is a
// few kilobytes; anything bigger is broken or hostile (reports/ is the one
// place a host can write).
const MaxReportSize = 1 << 20

// manifestInfo is the part of manifest.json status needs. The file list is
// skipped unparsed: it is most of the manifest, and status reads thousands.
type manifestInfo struct {
	host        string
	version     string
	publishedAt time.Time
	expected    string
	interval    string
}

// hostInput is everything known about one host, for decide.
type hostInput struct {
	name string
	// chroot is true when the host's directory holds a manifest or reports.
	chroot bool
	// opened: the host's directory exists and could be opened.
	opened      bool
	manifest    *manifestInfo
	manifestErr error
	report      *manifest.Report
	reportErr   error
	// progress is the host's progress.json (nil when absent or unusable:
	// it only adds to the row).
	progress *manifest.Progress

	fleetKnown bool
	fleetHost  *fleet.Host
	evalErr    error
	build      *Build
	now        time.Time
	staleAfter time.Duration
	storeDir   string

	// reports is what reports/ held against its limits; reportsErr is
	// set when it could not be measured.
	reports    ReportsUsage
	reportsErr error
}

// readHost reads a host's manifest and report. Every failure is kept in the
// input, with its reason, for the row: one broken host never hides the others.
func readHost(root, name string, limits ReportLimits) hostInput {
	in := hostInput{name: name}
	dir := hostDir(root, name)
	// The reports directory belongs to the host, which may be hostile: an
	// os.Root refuses symlinks that lead out of the chroot.
	r, err := os.OpenRoot(dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			in.chroot = true
			in.manifestErr = fmt.Errorf("cannot open %s: %s", dir, Reason(err))
		}
		return in
	}
	defer r.Close()
	in.opened = true

	data, err := readCapped(r, manifest.ManifestFile, manifest.MaxSize)
	switch {
	case err == nil:
		in.chroot = true
		in.manifest, in.manifestErr = parseManifest(data, name)
	case !errors.Is(err, fs.ErrNotExist):
		in.chroot = true
		in.manifestErr = err
	}

	// Limits first: a host over them gets its oldest logs removed, and
	// nothing of its reports/ is read this time.
	in.reports, err = EnforceReportLimitsIn(r, limits, false)
	if err != nil && !errors.Is(err, ErrReportsOverLimit) {
		in.reportsErr = err
	}
	if in.reports.Files > 0 || in.reportsErr != nil {
		in.chroot = true
	}
	if in.reports.Exceeded() {
		return in
	}
	// Unmeasured (permission denied, say), status.json is still read: its
	// own cap bounds it, and its error says more than the walk's.

	in.readReport(r)
	return in
}

// readReport reads the host's status.json into in. A chroot with a
// reports/ directory is one even before the host's first report.
func (in *hostInput) readReport(r *os.Root) {
	data, st, err := readCappedStat(r, manifest.StatusFile, MaxReportSize)
	switch {
	case err == nil:
		in.chroot = true
		in.report, in.reportErr = parseReport(data, in.name)
		if in.report != nil {
			heartbeat(st, in.report)
		}
		in.progress, _ = ReadProgress(r, in.name)
	case errors.Is(err, fs.ErrNotExist):
		if _, err := r.Lstat(manifest.ReportsDir); err == nil {
			in.chroot = true
			// The first tick of a host: no report yet, maybe progress.
			in.progress, _ = ReadProgress(r, in.name)
		}
	default:
		in.chroot = true
		in.reportErr = err
	}
}

// heartbeat dates an unchanged report by its file's mtime when that is
// newer: an agent whose report did not change since its last upload only
// moves status.json's mtime ("seen now"), which is cheaper on the wire
// than a new upload. Both times come from the host's clock, as before.
// st is the file as it was read (no second look by name, which a host
// could have swapped in between).
func heartbeat(st fs.FileInfo, rep *manifest.Report) {
	if rep.Result != manifest.ResultUnchanged {
		return
	}
	if mt := st.ModTime(); mt.After(rep.FinishedAt) {
		rep.StartedAt, rep.FinishedAt = mt.UTC(), mt.UTC()
	}
}

// readCapped reads a regular file of at most limit bytes below r.
func readCapped(r *os.Root, name string, limit int64) ([]byte, error) {
	data, _, err := readCappedStat(r, name, limit)
	return data, err
}

// readCappedStat is readCapped that also returns the file's stat, taken
// on the descriptor it read.
func readCappedStat(r *os.Root, name string, limit int64) ([]byte, fs.FileInfo, error) {
	// O_NONBLOCK: a FIFO planted in place of the file must not hang status.
	f, err := r.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("%s: %s", name, Reason(err))
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %s", name, Reason(err))
	}
	if !st.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s is not a regular file (%s)", name, strings.TrimSpace(st.Mode().Type().String()))
	}
	if st.Size() > limit {
		return nil, nil, fmt.Errorf("%s is %s, over the %s limit", name, bytesize.Format(st.Size()), bytesize.Format(limit))
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %s", name, Reason(err))
	}
	if int64(len(data)) > limit {
		return nil, nil, fmt.Errorf("%s grew over the %s limit while being read", name, bytesize.Format(limit))
	}
	return data, st, nil
}

// Reason is the cause of a file error without the path noise of PathError.
func Reason(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		if errors.Is(pe.Err, fs.ErrPermission) {
			return "permission denied (run bento status as root, or as the owner of the chroot root)"
		}
		return pe.Err.Error()
	}
	return err.Error()
}

// parseManifest reads the few fields status needs with gjson, which skips
// the file list without decoding it.
func parseManifest(data []byte, host string) (*manifestInfo, error) {
	res, err := manifestObject(data)
	if err != nil {
		return nil, err
	}
	m, published, err := manifestFields(res)
	if err != nil {
		return nil, err
	}
	if m.version == "" {
		return nil, fmt.Errorf("manifest.json has no version")
	}
	if m.host != "" && m.host != host {
		return nil, fmt.Errorf("manifest.json is for host %q", m.host)
	}
	if published != "" {
		t, err := time.Parse(time.RFC3339Nano, published)
		if err != nil {
			return nil, fmt.Errorf("manifest.json: publishedAt %q is not an RFC 3339 time", published)
		}
		m.publishedAt = t
	}
	return m, nil
}

// manifestObject parses a manifest: a JSON object of a format this bento
// reads.
func manifestObject(data []byte) (gjson.Result, error) {
	if !gjson.ValidBytes(data) {
		return gjson.Result{}, fmt.Errorf("manifest.json: %s", jsonReason(json.Unmarshal(data, new(any)), len(data)))
	}
	res := gjson.ParseBytes(data)
	if !res.IsObject() {
		return gjson.Result{}, fmt.Errorf("manifest.json is not a JSON object")
	}
	if f := res.Get("format"); !readableFormat(f) {
		return gjson.Result{}, fmt.Errorf("manifest.json: format %s is not one this bento reads (%d to %d): it is older or newer than the one that published it", f.Raw, manifest.MinManifestFormat, manifest.ManifestFormat)
	}
	return res, nil
}

// manifestFields reads the string fields status needs, and publishedAt
// as written; a field of another type is an error.
func manifestFields(res gjson.Result) (*manifestInfo, string, error) {
	m := &manifestInfo{}
	var errs []string
	str := func(key string, dst *string) {
		v := res.Get(key)
		switch v.Type {
		case gjson.String:
			*dst = v.Str
		case gjson.Null:
		default:
			errs = append(errs, fmt.Sprintf("%s is %s, not a string", key, gjsonKind(v)))
		}
	}
	str("host", &m.host)
	str("version", &m.version)
	str("expectedToplevel", &m.expected)
	str("interval", &m.interval)
	var published string
	str("publishedAt", &published)
	if len(errs) > 0 {
		return nil, "", fmt.Errorf("manifest.json: %s", strings.Join(errs, "; "))
	}
	return m, published, nil
}

// readableFormat tells whether a manifest's format is a whole number this
// bento reads.
func readableFormat(f gjson.Result) bool {
	return f.Type == gjson.Number && f.Num >= manifest.MinManifestFormat && f.Num <= manifest.ManifestFormat && f.Num == float64(int(f.Num))
}

func gjsonKind(v gjson.Result) string {
	switch {
	case v.IsArray():
		return "an array"
	case v.IsObject():
		return "an object"
	case v.Type == gjson.Number:
		return "a number"
	case v.Type == gjson.True || v.Type == gjson.False:
		return "a boolean"
	}
	return "a " + v.Type.String()
}

// parseReport decodes a host's report and says why it cannot be used.
func parseReport(data []byte, host string) (*manifest.Report, error) {
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil, fmt.Errorf("status.json is empty")
	}
	var r manifest.Report
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("status.json: %s", decodeReason(err, data))
	}
	if r.Format != manifest.Format {
		return nil, fmt.Errorf("status.json: format %d is not %d: the host runs an agent older or newer than this bento", r.Format, manifest.Format)
	}
	if r.Host != "" && r.Host != host {
		return nil, fmt.Errorf("status.json is for host %q", r.Host)
	}
	if r.FinishedAt.IsZero() && r.StartedAt.IsZero() {
		return nil, fmt.Errorf("status.json has neither finishedAt nor startedAt: its age is unknown")
	}
	return &r, nil
}

// decodeReason says why a report did not decode.
func decodeReason(err error, data []byte) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	if !errors.As(err, &se) && !errors.As(err, &te) {
		// encoding/json does not say which time field it choked on.
		if why := badTime(data); why != "" {
			return why
		}
	}
	return jsonReason(err, len(data))
}

// badTime names the first time field of a report that is no RFC 3339 time.
func badTime(data []byte) string {
	for _, key := range []string{"startedAt", "finishedAt", "rebootScheduled", "nextRetry"} {
		v := gjson.GetBytes(data, key)
		switch v.Type {
		case gjson.Null:
		case gjson.String:
			if _, err := time.Parse(time.RFC3339Nano, v.Str); err != nil {
				return fmt.Sprintf("%s %q is not an RFC 3339 time", key, v.Str)
			}
		default:
			return fmt.Sprintf("%s is %s, not an RFC 3339 time string", key, gjsonKind(v))
		}
	}
	return ""
}

// jsonReason turns an encoding/json error into a short reason.
func jsonReason(err error, size int) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case err == nil:
		return "invalid JSON"
	case errors.As(err, &se) && se.Offset >= int64(size):
		return fmt.Sprintf("truncated JSON (ends after %d bytes)", size)
	case errors.As(err, &se):
		return fmt.Sprintf("invalid JSON at byte %d: %s", se.Offset, se.Error())
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			return fmt.Sprintf("the document is %s, not an object", article(te.Value))
		}
		return fmt.Sprintf("%s is %s, not %s", field, article(te.Value), article(te.Type.Kind().String()))
	}
	return err.Error()
}

// article names a JSON or Go kind with its article ("an array").
func article(kind string) string {
	switch kind {
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "array", "slice":
		return "an array"
	case "object", "struct", "map":
		return "an object"
	}
	switch {
	case strings.HasPrefix(kind, "int") || strings.HasPrefix(kind, "uint"):
		return "an integer"
	case strings.HasPrefix(kind, "number") || strings.HasPrefix(kind, "float"):
		return "a number"
	}
	return kind
}
