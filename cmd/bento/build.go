package main

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// buildCommand is a placeholder until its package lands.
func buildCommand() *cli.Command {
	return &cli.Command{
		Name:   "build",
		Usage:  "(not yet implemented)",
		Hidden: true,
		Action: func(*cli.Context) error { return errors.New("build: not yet implemented") },
	}
}
