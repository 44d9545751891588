package main

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// agentCommand is a placeholder until its package lands.
func agentCommand() *cli.Command {
	return &cli.Command{
		Name:   "agent",
		Usage:  "(not yet implemented)",
		Hidden: true,
		Action: func(*cli.Context) error { return errors.New("agent: not yet implemented") },
	}
}
