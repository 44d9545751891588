package main

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// diffCommand is a placeholder until its package lands.
func diffCommand() *cli.Command {
	return &cli.Command{
		Name:   "diff",
		Usage:  "(not yet implemented)",
		Hidden: true,
		Action: func(*cli.Context) error { return errors.New("diff: not yet implemented") },
	}
}
