// Command agentcheck loads an agent configuration file the way
// `bento agent run --config FILE` does and validates it. nixtest runs it on
// the file the NixOS module writes, so the module and the agent cannot
// drift apart. It lives under testdata/ so that `go build ./...` and
// `go test ./...` leave it alone; nixtest builds it explicitly.
package main

import (
	"fmt"
	"os"

	"github.com/bento-nix/bento/agent"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: agentcheck CONFIG.json")
		os.Exit(2)
	}
	cfg := agent.Defaults()
	warnings, err := cfg.LoadFile(os.Args[1])
	for _, w := range warnings {
		fmt.Println("warning:", w)
	}
	if err == nil {
		err = cfg.Complete()
	}
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	if len(warnings) > 0 {
		os.Exit(1)
	}
}
