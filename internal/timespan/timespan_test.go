package timespan

import (
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"90s", 90 * time.Second},
		{"90", 90 * time.Second},
		{"1.5", 1500 * time.Millisecond},
		{"15min", 15 * time.Minute},
		{"15m", 15 * time.Minute},
		{"1h 30min", 90 * time.Minute},
		{"1h30min", 90 * time.Minute},
		{"1h30m", 90 * time.Minute},
		{"1h30m10.5s", 90*time.Minute + 10500*time.Millisecond},
		{"2 h", 2 * time.Hour},
		{"1min 30", 90 * time.Second},
		{"2days", 48 * time.Hour},
		{"1w", 7 * 24 * time.Hour},
		{"500ms", 500 * time.Millisecond},
		{"500msec", 500 * time.Millisecond},
		{"10us", 10 * time.Microsecond},
		{"1y", 31557600 * time.Second},
		{" 5min ", 5 * time.Minute},
		{"0", 0},
	} {
		got, err := Parse(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	for _, tc := range []struct{ in, msg string }{
		{"", "is not a duration"},
		{"15 fortnights", "is not a duration"},
		{"min", "is not a duration"},
		{"-5m", "is not a duration"},
		{"1e9", "is not a duration"},
		{"NaN", "is not a duration"},
		{"30 5min", "is not a duration"},
		{"1..5s", "is not a duration"},
		{"300y", "too long"},
		{"1e300", "is not a duration"},
		{"99999999999999999999", "too long"},
	} {
		_, err := Parse(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("Parse(%q) = %v, want an error with %q", tc.in, err, tc.msg)
		}
	}
}

func TestFromSeconds(t *testing.T) {
	if d, err := FromSeconds(60); err != nil || d != time.Minute {
		t.Errorf("FromSeconds(60) = %v, %v", d, err)
	}
	for _, n := range []float64{1e300, -1} {
		if d, err := FromSeconds(n); err == nil {
			t.Errorf("FromSeconds(%g) = %v, want an error", n, d)
		}
	}
}

func TestFormatRoundTrips(t *testing.T) {
	for _, d := range []time.Duration{0, time.Second, 90 * time.Minute, 36*time.Hour + 5*time.Millisecond, 15 * time.Minute} {
		s := Format(d)
		back, err := Parse(s)
		if err != nil || back != d {
			t.Errorf("Parse(Format(%v) = %q) = %v, %v", d, s, back, err)
		}
	}
	if got := Format(90 * time.Minute); got != "1h 30min" {
		t.Errorf("Format(90m) = %q, want \"1h 30min\"", got)
	}
}
