package main

import (
	"github.com/urfave/cli/v2"
)

// DefaultHostGroup is the group of the hosts' SFTP users
// (services.bento-server.group), whose sshd Match block jails them.
const DefaultHostGroup = "bento"

func hostGroupFlag() cli.Flag {
	return &cli.StringFlag{Name: "host-group", Value: DefaultHostGroup, Usage: "the group of the hosts' SFTP users (services.bento-server.group): when it exists here, each host's user must be in it; \"\" skips the check", EnvVars: []string{"BENTO_HOST_GROUP"}}
}
