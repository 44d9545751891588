package logs

import "github.com/bento-nix/bento/internal/termsafe"

// TerminalWriter copies a host's log to an operator's terminal through the
// one sanitizer, termsafe: colours are kept when KeepColor is set, every
// other control sequence is dropped and escape sequences are bounded.
type TerminalWriter = termsafe.Writer
