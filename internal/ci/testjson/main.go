// Command testjson reads `go test -json` on stdin and prints what a
// person needs from it: each package's result line, the output of every
// failed test, build errors. It also holds the suite to its skip rule:
// under CI=true a skipped test fails the run unless the allow-list (the
// file named by -allow) names it with a reason. A test that quietly skips
// in CI tests nothing while the run looks green; the list keeps the
// exceptions few and explained (the VM tests, which need KVM, say).
//
// Usage: go test -json ./... | testjson -allow .ci/skips
//
// The allow-list has one entry a line, "package test-regexp reason…";
// package is relative to the module (cmd/bento), the regexp must match
// the whole test name (subtests included: TestX/case); # starts a comment.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
)

const module = "github.com/bento-nix/bento"

// event is one line of go test -json (cmd/test2json).
type event struct {
	Action     string
	Package    string
	ImportPath string // build-output, build-fail
	Test       string
	Output     string
}

type allowed struct {
	pkg    string
	test   *regexp.Regexp
	reason string
	line   int
}

type skip struct {
	pkg, test, reason string
}

func main() {
	allowFile := flag.String("allow", "", "the allow-list of tests that may skip under CI=true")
	flag.Parse()
	allow, err := readAllow(*allowFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testjson:", err)
		os.Exit(2)
	}
	res, err := run(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testjson:", err)
		os.Exit(2)
	}
	strict := os.Getenv("CI") == "true"
	bad := res.check(allow)
	for _, s := range res.skips {
		fmt.Printf("skipped: %s %s: %s\n", s.pkg, s.test, s.reason)
	}
	if len(bad) > 0 {
		verdict := "note (CI=true makes this fail)"
		if strict {
			verdict = "FAIL"
		}
		fmt.Printf("%s: %d skipped tests are not on %s's allow-list (fix what they need, or add \"package test-regexp reason\" there):\n", verdict, len(bad), *allowFile)
		for _, s := range bad {
			fmt.Printf("  %s %s: %s\n", s.pkg, s.test, s.reason)
		}
	}
	fmt.Printf("fuzz seed corpora replayed as tests: %d targets\n", res.fuzzSeeds)
	// The plain closing line that CI reads, tests and subtests alike.
	fmt.Printf("%d passed, %d failed, %d skipped\n", res.passes, res.failures, len(res.skips))
	if res.failed || (strict && len(bad) > 0) {
		os.Exit(1)
	}
}

type result struct {
	skips     []skip
	failed    bool
	fuzzSeeds int
	// Counts of tests (subtests included) by outcome.
	passes, failures int
}

// run copies the interesting parts of the event stream to out.
func run(in io.Reader, out io.Writer) (*result, error) {
	st := &eventReader{res: &result{}, buf: map[string][]string{}, out: out}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			// go test prints some errors (a bad flag, no such package)
			// outside the JSON stream.
			fmt.Fprintf(out, "%s\n", line)
			continue
		}
		st.handle(e)
	}
	return st.res, sc.Err()
}

// eventReader is run's state between events.
type eventReader struct {
	res *result
	buf map[string][]string // package + test → its output so far
	out io.Writer
}

func (st *eventReader) handle(e event) {
	switch {
	case e.Action == "build-output":
		fmt.Fprint(st.out, e.Output)
	case e.Action == "build-fail":
		st.res.failed = true
	case e.Test == "":
		// "PASS" precedes every package's "ok" line: one is enough.
		if e.Action == "output" && e.Output != "PASS\n" {
			fmt.Fprint(st.out, e.Output)
		}
		if e.Action == "fail" {
			st.res.failed = true
		}
	default:
		st.testEvent(e)
	}
}

// testEvent keeps a test's output until its end, and prints it only if
// it failed.
func (st *eventReader) testEvent(e event) {
	pkg := strings.TrimPrefix(strings.TrimPrefix(e.Package+e.ImportPath, module), "/")
	key := pkg + " " + e.Test
	switch e.Action {
	case "output":
		st.buf[key] = append(st.buf[key], e.Output)
		return
	case "fail":
		st.res.failed = true
		st.res.failures++
		fmt.Fprint(st.out, strings.Join(st.buf[key], ""))
	case "skip":
		st.res.skips = append(st.res.skips, skip{pkg: pkg, test: e.Test, reason: reason(st.buf[key])})
	case "pass":
		st.res.passes++
		if strings.HasPrefix(e.Test, "Fuzz") && !strings.Contains(e.Test, "/") {
			st.res.fuzzSeeds++
		}
	default:
		return
	}
	delete(st.buf, key)
}

// reason is what the test printed when it skipped, without go test's own
// lines.
func reason(output []string) string {
	var keep []string
	for _, l := range output {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		keep = append(keep, t)
	}
	if len(keep) == 0 {
		return "(no reason given)"
	}
	return strings.Join(keep, " / ")
}

// check returns the skips no allow-list entry covers.
func (r *result) check(allow []allowed) []skip {
	var bad []skip
	for _, s := range r.skips {
		ok := false
		for _, a := range allow {
			if a.pkg == s.pkg && a.test.MatchString(s.test) {
				ok = true
				break
			}
		}
		if !ok {
			bad = append(bad, s)
		}
	}
	sort.Slice(bad, func(i, j int) bool { return bad[i].pkg+bad[i].test < bad[j].pkg+bad[j].test })
	return bad
}

func readAllow(file string) ([]allowed, error) {
	if file == "" {
		return nil, nil
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseAllow(f, file)
}

func parseAllow(r io.Reader, name string) ([]allowed, error) {
	var list []allowed
	var errs []error
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 3 {
			errs = append(errs, fmt.Errorf("%s:%d: want \"package test-regexp reason…\": every exception says why", name, n))
			continue
		}
		re, err := regexp.Compile("^(?:" + f[1] + ")$")
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %w", name, n, err))
			continue
		}
		list = append(list, allowed{pkg: f[0], test: re, reason: strings.Join(f[2:], " "), line: n})
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, err)
	}
	return list, errors.Join(errs...)
}
