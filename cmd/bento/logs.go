package main

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// logsCommand is a placeholder until its package lands.
func logsCommand() *cli.Command {
	return &cli.Command{
		Name:   "logs",
		Usage:  "(not yet implemented)",
		Hidden: true,
		Action: func(*cli.Context) error { return errors.New("logs: not yet implemented") },
	}
}
