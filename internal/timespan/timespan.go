// Package timespan parses durations in systemd's time span syntax
// (systemd.time(7): "90s", "15min", "1h 30min", "2 days") and in Go's
// (time.ParseDuration: "15m", "1h30m"), so that NixOS users can write the
// agent's durations the way they write every other duration in NixOS.
package timespan

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Syntax is the one-line description used in error messages and docs.
const Syntax = `a systemd time span such as "90s", "15min" or "1h 30min" (Go's "1h30m" works too)`

// units are systemd's spellings (src/basic/time-util.c), which include
// Go's: "m" is minutes in both. systemd's month and year are the averages.
var units = map[string]time.Duration{
	"ns": time.Nanosecond, "nsec": time.Nanosecond,
	"us": time.Microsecond, "usec": time.Microsecond, "µs": time.Microsecond, "μs": time.Microsecond,
	"ms": time.Millisecond, "msec": time.Millisecond,
	"s": time.Second, "sec": time.Second, "second": time.Second, "seconds": time.Second,
	"m": time.Minute, "min": time.Minute, "minute": time.Minute, "minutes": time.Minute,
	"h": time.Hour, "hr": time.Hour, "hour": time.Hour, "hours": time.Hour,
	"d": 24 * time.Hour, "day": 24 * time.Hour, "days": 24 * time.Hour,
	"w": 7 * 24 * time.Hour, "week": 7 * 24 * time.Hour, "weeks": 7 * 24 * time.Hour,
	"M": 2629800 * time.Second, "month": 2629800 * time.Second, "months": 2629800 * time.Second,
	"y": 31557600 * time.Second, "year": 31557600 * time.Second, "years": 31557600 * time.Second,
}

// Parse parses a time span. A bare number is seconds (as in systemd).
// Values that do not fit a time.Duration (about 292 years) are refused,
// never wrapped.
func Parse(s string) (time.Duration, error) {
	bad := func() (time.Duration, error) {
		return 0, fmt.Errorf("%q is not a duration: write %s", s, Syntax)
	}
	rest := strings.TrimSpace(s)
	if rest == "" {
		return bad()
	}
	if n, err := strconv.ParseFloat(rest, 64); err == nil && isPlain(rest) {
		return fromFloat(strconv.Quote(s), n, time.Second)
	}
	var total float64
	for rest != "" {
		n, unit, tail, ok := nextTerm(rest)
		if !ok {
			return bad()
		}
		rest = tail
		total += n * float64(unit)
	}
	return fromFloat(strconv.Quote(s), total, 1)
}

func isNumberByte(c byte) bool { return c >= '0' && c <= '9' || c == '.' }

// nextTerm reads one "<number>[ ]<unit>" off the front of s. A unit-less
// number is only allowed alone or last ("1min 30").
func nextTerm(s string) (n float64, unit time.Duration, rest string, ok bool) {
	n, rest, ok = leadingNumber(s)
	if !ok {
		return 0, 0, "", false
	}
	unit, rest, ok = leadingUnit(strings.TrimLeft(rest, " \t"))
	if !ok {
		return 0, 0, "", false
	}
	return n, unit, rest, true
}

// leadingNumber reads the number at the front of s.
func leadingNumber(s string) (n float64, rest string, ok bool) {
	i := 0
	for i < len(s) && isNumberByte(s[i]) {
		i++
	}
	if i == 0 {
		return 0, "", false
	}
	n, err := strconv.ParseFloat(s[:i], 64)
	if err != nil {
		return 0, "", false
	}
	return n, s[i:], true
}

// leadingUnit reads the unit at the front of s, seconds when there is
// none and nothing follows, and the blanks after it.
func leadingUnit(s string) (unit time.Duration, rest string, ok bool) {
	j := 0
	for j < len(s) && isUnitByte(s[j]) {
		j++
	}
	if j == 0 {
		return time.Second, "", s == ""
	}
	if unit, ok = units[s[:j]]; !ok {
		return 0, "", false
	}
	return unit, strings.TrimLeft(s[j:], " \t"), true
}

func isUnitByte(c byte) bool { return !isNumberByte(c) && c != ' ' && c != '\t' }

// isPlain says whether s is a plain decimal number (not "1e9", "Inf" or
// "0x10", which ParseFloat also takes).
func isPlain(s string) bool {
	for _, r := range s {
		if (r < '0' || r > '9') && r != '.' {
			return false
		}
	}
	return true
}

// FromSeconds converts a number of seconds (a JSON number), refusing what
// does not fit.
func FromSeconds(n float64) (time.Duration, error) {
	return fromFloat(strconv.FormatFloat(n, 'g', -1, 64), n, time.Second)
}

// fromFloat converts n units; shown is the value as the user wrote it.
func fromFloat(shown string, n float64, unit time.Duration) (time.Duration, error) {
	v := n * float64(unit)
	if math.IsNaN(v) || v < 0 {
		return 0, fmt.Errorf("%s is not a duration: write %s", shown, Syntax)
	}
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("%s is too long a duration (at most about 292 years)", shown)
	}
	return time.Duration(v), nil
}

// Format writes d the way systemd does ("1h 30min", "90ms"), which Parse
// reads back exactly.
func Format(d time.Duration) string {
	if d == 0 {
		return "0"
	}
	if d < 0 {
		return "-" + Format(-d)
	}
	var parts []string
	for _, u := range []struct {
		name string
		d    time.Duration
	}{{"d", 24 * time.Hour}, {"h", time.Hour}, {"min", time.Minute}, {"s", time.Second}, {"ms", time.Millisecond}, {"us", time.Microsecond}, {"ns", time.Nanosecond}} {
		if d >= u.d {
			parts = append(parts, fmt.Sprintf("%d%s", d/u.d, u.name))
			d %= u.d
		}
	}
	return strings.Join(parts, " ")
}
