package benchtb

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/bento-nix/bento/internal/bytesize"
)

// DiskKiB is what du(1) counts for dir, in KiB: blocks, so hard links
// count once. 0 when du fails.
func DiskKiB(dir string) int64 {
	out, err := exec.Command("du", "-sk", dir).Output()
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.Fields(string(out))[0], 10, 64)
	return n
}

// FormatKiB is a count of KiB for people.
func FormatKiB(k int64) string { return bytesize.Format(k << 10) }

// FSType is the type of the file system dir is on, as df(1) names it
// ("?" when df fails): hard links and fsync cost differ between them.
func FSType(dir string) string {
	out, err := exec.Command("df", "--output=fstype", dir).Output()
	if err != nil {
		return "?"
	}
	lines := strings.Fields(string(out))
	return lines[len(lines)-1]
}

// NixModule is the text of a fleet's module number i, padded with
// comments to about size bytes: the bulk of a real fleet's tree.
func NixModule(i, size int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# module %d\n{ config, ... }: {\n", i)
	for b.Len() < size-4 {
		fmt.Fprintf(&b, "  # option %d of module %d, padding the file to a realistic size\n", b.Len(), i)
	}
	b.WriteString("}\n")
	return b.String()
}

// Round is d to a precision a table of timings wants: milliseconds under
// a second, centiseconds above.
func Round(d time.Duration) string {
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(10 * time.Millisecond).String()
}
