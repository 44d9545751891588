// Package benchtb lets benchmark programs (bench/…) use the harnesses
// written for tests (internal/sshdtest, internal/e2e), which take a
// testing.TB: failures end the run, cleanups run at the end in reverse order.
package benchtb

import (
	"fmt"
	"io"
	"os"
	"testing"
)

// TB is a testing.TB outside of go test.
type TB struct {
	testing.TB
	name     string
	log      io.Writer
	cleanups []func()
	failed   bool
}

// fatal unwinds a Fatal call to Run.
type fatal struct{}

// Run calls f with a TB named name whose Log output goes to log, then runs
// the cleanups, and returns the exit status: 1 when f returned an error
// (printed to stderr, prefixed with name) or called Fatal, else 0.
func Run(name string, log io.Writer, f func(*TB) error) (code int) {
	tb := &TB{name: name, log: log}
	defer tb.cleanup()
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(fatal); !ok {
				panic(r)
			}
			code = 1
		}
	}()
	if err := f(tb); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return 1
	}
	if tb.failed {
		return 1
	}
	return 0
}

func (t *TB) Helper()                         {}
func (t *TB) Name() string                    { return t.name }
func (t *TB) Failed() bool                    { return t.failed }
func (t *TB) Cleanup(f func())                { t.cleanups = append(t.cleanups, f) }
func (t *TB) Logf(format string, args ...any) { fmt.Fprintf(t.log, format+"\n", args...) }
func (t *TB) Log(args ...any)                 { fmt.Fprintln(t.log, args...) }

func (t *TB) Errorf(format string, args ...any) {
	t.failed = true
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

func (t *TB) Fatalf(format string, args ...any) {
	t.Errorf(format, args...)
	panic(fatal{})
}

func (t *TB) Fatal(args ...any) { t.Fatalf("%s", fmt.Sprint(args...)) }

func (t *TB) TempDir() string {
	d, err := os.MkdirTemp("", "bento-bench-")
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.cleanups = append(t.cleanups, func() { os.RemoveAll(d) })
	return d
}

func (t *TB) cleanup() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
	t.cleanups = nil
}
