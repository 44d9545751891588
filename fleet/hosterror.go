package fleet

import "fmt"

// HostError is the failure of one host at one stage of a command
// (Stage "build", "copy to …", "publish"; "" when the host failed as a
// whole, as in discovery). Its message starts with "host NAME: ", so a
// message that lists hosts names the one that failed; a line that shows
// the host already renders Detail. Callers find the host and the cause
// with errors.As, never by reading the message.
type HostError struct {
	Host  string
	Stage string
	Err   error
}

func (e *HostError) Error() string { return "host " + e.Host + ": " + e.Detail() }

// Detail is the message without the host: "stage: cause".
func (e *HostError) Detail() string {
	if e.Stage == "" {
		return fmt.Sprint(e.Err)
	}
	return e.Stage + ": " + fmt.Sprint(e.Err)
}

func (e *HostError) Unwrap() error { return e.Err }
