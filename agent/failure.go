package agent

import (
	"errors"

	"github.com/bento-nix/bento/internal/proc"
	"github.com/bento-nix/bento/manifest"
)

// stepError is an attempt's failure in one of its steps ("fetch",
// "build", "activation"): the step is kept apart from the cause so that
// the report's summary can name it without taking a message apart.
type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return e.step + ": " + e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

// summary is err as a status row shows it: the step and what the failed
// command itself said ("build: error: builder for … failed"), without the
// command line and the paths it was given. Errors of no step or of no
// command come back whole.
func summary(err error) string {
	var s *stepError
	var b proc.Briefer
	if errors.As(err, &s) && errors.As(s.err, &b) {
		return s.step + ": " + b.Brief()
	}
	return err.Error()
}

// recordFailure says in rep how and why an attempt ended badly: the
// whole error, and its summary.
func recordFailure(rep *manifest.Report, stage manifest.Stage, result manifest.Result, err error) {
	rep.Stage, rep.Result = stage, result
	rep.Error, rep.Summary = err.Error(), summary(err)
}

// addError appends msg to the report's error and, when it has one, to
// its summary.
func addError(rep *manifest.Report, msg string) {
	rep.Error = joinMsg(rep.Error, msg)
	if rep.Summary != "" {
		rep.Summary = joinMsg(rep.Summary, msg)
	}
}
