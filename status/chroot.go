package status

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/manifest"
)

// OpenChroot opens a host's chroot as an os.Root, so that no symlink the
// host planted in its reports/ leads a root-run bento out of it.
func OpenChroot(root, host string) (*os.Root, error) {
	if err := fleet.ValidateName(host); err != nil {
		return nil, &UsageError{err}
	}
	r, err := os.OpenRoot(hostDir(root, host))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, &UsageError{fmt.Errorf("host %s: no chroot at %s (bento status lists the hosts; --chroot-root sets the root)", host, hostDir(root, host))}
		}
		return nil, fmt.Errorf("host %s: %s", host, Reason(err))
	}
	return r, nil
}

// ReadReport reads and checks the report (status.json) in a host's open
// chroot, capped at MaxReportSize.
func ReadReport(r *os.Root, host string) (*manifest.Report, error) {
	data, err := readCapped(r, manifest.StatusFile, MaxReportSize)
	if err != nil {
		return nil, err
	}
	return parseReport(data, host)
}

// ParseReport checks a report (status.json) of host read from elsewhere
// (a mirror) with the rules bento status reads the chroots' with.
func ParseReport(data []byte, host string) (*manifest.Report, error) {
	if len(data) > MaxReportSize {
		return nil, fmt.Errorf("status.json is over the %d byte limit", MaxReportSize)
	}
	return parseReport(data, host)
}
