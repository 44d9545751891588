package main

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// deployCommand is a placeholder until its package lands.
func deployCommand() *cli.Command {
	return &cli.Command{
		Name:   "deploy",
		Usage:  "(not yet implemented)",
		Hidden: true,
		Action: func(*cli.Context) error { return errors.New("deploy: not yet implemented") },
	}
}
