package progress_test

import (
	"regexp"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/testio"

	"github.com/vbauerster/mpb/v8"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/builder/progress"
)

// TestLiveRunningLines checks what the live display shows while hosts run:
// a line per building host with its phase, elapsed time and Nix's last
// line, and the counter, which alone counts hosts being evaluated or
// waiting (a chunk evaluates hundreds at once).
func TestLiveRunningLines(t *testing.T) {
	var buf testio.Buffer
	refresh := make(chan any)
	l := progress.NewLive(&buf, false, mpb.WithManualRefresh(refresh), mpb.WithWidth(160))
	l.Begin([]string{"alpha", "beta", "gamma", "delta"})
	l.Phase("alpha", builder.PhaseEvaluating)
	l.Phase("alpha", builder.PhaseBuilding)
	l.Log("alpha", "building '/nix/store/xxxx-foo.drv'...")
	l.Phase("beta", builder.PhaseEvaluating)
	l.Phase("beta", builder.PhaseWaiting)
	l.Phase("delta", builder.PhaseEvaluating)

	want := []*regexp.Regexp{
		regexp.MustCompile(`alpha\s+building\s+\d[^ ]*\s+building '/nix/store/xxxx-foo.drv'\.\.\.`),
		regexp.MustCompile(`0/4 done, 1 evaluating, 1 running, 1 waiting`),
	}
	deadline := time.Now().Add(time.Minute)
	for {
		refresh <- time.Now()
		out := ansi.ReplaceAllString(buf.String(), "")
		missing := 0
		for _, re := range want {
			if !re.MatchString(out) {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the live display never showed the running hosts:\n%s", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if regexp.MustCompile(`gamma\s+(evaluating|waiting|building)`).MatchString(ansi.ReplaceAllString(buf.String(), "")) {
		t.Errorf("a host that has not started has a running line:\n%s", buf.String())
	}
	if regexp.MustCompile(`(beta|delta)\s+(evaluating|waiting)`).MatchString(ansi.ReplaceAllString(buf.String(), "")) {
		t.Errorf("a host evaluating or waiting has a line of its own:\n%s", buf.String())
	}
	for _, h := range []string{"alpha", "beta", "gamma", "delta"} {
		l.Done(builder.Result{Host: h, Status: builder.StatusBuilt, OutPath: "/nix/store/out-" + h})
	}
	go func() {
		// End waits for a last render.
		for range 100 {
			select {
			case refresh <- time.Now():
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	l.End()
}
