package status

import (
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bento-nix/bento/internal/timespan"
)

// PollInterval tells the longest gap between two polls of a client whose
// schedule is spec: a systemd calendar event (OnCalendar: "*:0/15",
// "hourly", "*-*-* 04:00:00") or a time span ("15min", "1h 30min"). It
// answers false when it cannot tell (weekday or date restrictions, an empty
// spec): the caller then uses a default.
func PollInterval(spec string) (time.Duration, bool) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return 0, false
	}
	if d, ok := shorthand[strings.ToLower(spec)]; ok {
		return d, true
	}
	if d, err := timespan.Parse(spec); err == nil && d > 0 {
		return d, true
	}
	return parseCalendar(spec)
}

var shorthand = map[string]time.Duration{
	"minutely":     time.Minute,
	"hourly":       time.Hour,
	"daily":        24 * time.Hour,
	"weekly":       7 * 24 * time.Hour,
	"monthly":      31 * 24 * time.Hour,
	"quarterly":    92 * 24 * time.Hour,
	"semiannually": 184 * 24 * time.Hour,
	"yearly":       366 * 24 * time.Hour,
	"annually":     366 * 24 * time.Hour,
}

// parseCalendar handles the calendar events a poll schedule uses: an
// optional "*-*-*" date and a time whose hour and minute fields are "*",
// a value, a list "a,b", a range "a..b" or a repetition "a/n".
func parseCalendar(s string) (time.Duration, bool) {
	clock, ok := dailyClock(s)
	if !ok {
		return 0, false
	}
	hours, minutes, ok := clockValues(clock)
	if !ok {
		return 0, false
	}
	if len(hours) == 24 {
		return time.Duration(maxGap(minutes, 60)) * time.Minute, true
	}
	// Several minutes within the chosen hours: the longest gap is between
	// the last poll of one chosen hour and the first of the next.
	gap := maxGap(hours, 24)*60 - (minutes[len(minutes)-1] - minutes[0])
	if consecutive(hours) {
		gap = max(gap, maxGap(minutes, 60))
	}
	return time.Duration(gap) * time.Minute, true
}

// dailyClock is the time of a calendar event on every day (no date or
// only "*-*-*").
func dailyClock(s string) (string, bool) {
	var clock string
	for _, f := range strings.Fields(s) {
		switch {
		case strings.Contains(f, ":"):
			clock = f
		case f == "*-*-*":
		default:
			// Weekdays, dates, time zones: too rare for a poll schedule
			// to be worth modelling.
			return "", false
		}
	}
	return clock, clock != ""
}

// clockValues expands the hour and minute fields of a time, "h:m" or
// "h:m:s".
func clockValues(clock string) (hours, minutes []int, ok bool) {
	parts := strings.Split(clock, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return nil, nil, false
	}
	if hours, ok = values(parts[0], 24); !ok {
		return nil, nil, false
	}
	if minutes, ok = values(parts[1], 60); !ok {
		return nil, nil, false
	}
	return hours, minutes, true
}

// values expands one calendar field to the sorted values it matches in
// [0, limit).
func values(field string, limit int) ([]int, bool) {
	set := map[int]bool{}
	for _, item := range strings.Split(field, ",") {
		lo, hi, step, ok := calendarItem(item, limit)
		if !ok {
			return nil, false
		}
		for v := lo; v <= hi; v += step {
			set[v] = true
		}
	}
	out := make([]int, 0, len(set))
	for v := range set {
		out = append(out, v)
	}
	slices.Sort(out)
	return out, len(out) > 0
}

// calendarItem reads one item of a field, "*", "a", "a..b", each with an
// optional "/n", as the values lo, lo+step, … up to hi. A value with a
// repetition ("5/15") runs to the end of the field's range.
func calendarItem(item string, limit int) (lo, hi, step int, ok bool) {
	item, step, ok = cutStep(item)
	if !ok {
		return 0, 0, 0, false
	}
	lo, hi, ok = itemBounds(item, step, limit)
	if !ok || lo < 0 || hi >= limit || lo > hi {
		return 0, 0, 0, false
	}
	return lo, hi, max(step, 1), true
}

// itemBounds is the first and last value of an item without its "/n"
// (step is n, 0 for none), not yet checked against [0, limit).
func itemBounds(item string, step, limit int) (lo, hi int, ok bool) {
	a, b, isRange := strings.Cut(item, "..")
	switch {
	case item == "*":
		return 0, limit - 1, true
	case isRange:
		lo, err1 := strconv.Atoi(a)
		hi, err2 := strconv.Atoi(b)
		return lo, hi, err1 == nil && err2 == nil
	}
	n, err := strconv.Atoi(item)
	switch {
	case err != nil:
		return 0, 0, false
	case step == 0:
		return n, n, true
	}
	return n, limit - 1, true
}

// cutStep splits "a/n" into a and n (n > 0); an item without "/" has step 0.
func cutStep(item string) (string, int, bool) {
	base, s, found := strings.Cut(item, "/")
	if !found {
		return item, 0, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return "", 0, false
	}
	return base, n, true
}

// maxGap is the longest distance between consecutive values on a cycle of
// length period.
func maxGap(vs []int, period int) int {
	gap := vs[0] + period - vs[len(vs)-1]
	for i := 1; i < len(vs); i++ {
		gap = max(gap, vs[i]-vs[i-1])
	}
	return gap
}

// consecutive tells whether two chosen hours follow each other.
func consecutive(hours []int) bool {
	for i := 1; i < len(hours); i++ {
		if hours[i] == hours[i-1]+1 {
			return true
		}
	}
	return len(hours) > 1 && hours[0] == 0 && hours[len(hours)-1] == 23
}
