package timespan

import (
	"fmt"
	"time"
)

// Human is how bento shows every measured duration to people (a build's time, a
// host's age, a retry's delay): the two largest units, the second
// zero-padded and left out when it is zero, with tenths below 10s where
// they matter (a 1.2s build): 850ms, 1.2s, 45s, 3m, 3m05s, 2h05m, 4d07h.
// It is rounded to the last unit shown. What it prints, Parse reads back.
// (Format, exact, is for echoing a configured value.)
// A negative duration (a clock ahead) is shown as 0s: callers say which
// way it runs ("in 3m", "3m ago").
func Human(d time.Duration) string {
	const day = 24 * time.Hour
	switch {
	case d <= 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d.Round(100*time.Millisecond) < 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Round(100*time.Millisecond).Seconds())
	case d.Round(time.Second) < time.Minute:
		return fmt.Sprintf("%ds", d.Round(time.Second)/time.Second)
	case d.Round(time.Second) < time.Hour:
		return pair(d.Round(time.Second), time.Minute, time.Second, "m", "s")
	case d.Round(time.Minute) < day:
		return pair(d.Round(time.Minute), time.Hour, time.Minute, "h", "m")
	}
	return pair(d.Round(time.Hour), day, time.Hour, "d", "h")
}

// pair writes d in two units, big and small ("3m05s", "3m").
func pair(d, big, small time.Duration, bigUnit, smallUnit string) string {
	n, rest := d/big, d%big/small
	if rest == 0 {
		return fmt.Sprintf("%d%s", n, bigUnit)
	}
	return fmt.Sprintf("%d%s%02d%s", n, bigUnit, rest, smallUnit)
}
