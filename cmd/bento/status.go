package main

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// statusCommand is a placeholder until its package lands.
func statusCommand() *cli.Command {
	return &cli.Command{
		Name:   "status",
		Usage:  "(not yet implemented)",
		Hidden: true,
		Action: func(*cli.Context) error { return errors.New("status: not yet implemented") },
	}
}
