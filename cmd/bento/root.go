package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// explainRoot turns Nix's refusal to a user who is not root ("getting
// status of /nix/var/nix/daemon-socket/socket: Permission denied": with no
// daemon it may use, Nix would write the store itself) into what needs
// root and why. Other errors, and any error of root, pass unchanged; the
// exit status stays.
func explainRoot(command string, euid int, err error) error {
	if err == nil || euid == 0 {
		return err
	}
	msg := err.Error()
	if !strings.Contains(msg, "daemon-socket/socket") || !strings.Contains(msg, "Permission denied") && !strings.Contains(msg, "cannot connect") {
		return err
	}
	said := msg
	if i := strings.LastIndex(msg, "error: "); i >= 0 {
		said = msg[i+len("error: "):]
	}
	if command == "" {
		command = "bento"
	}
	hint := fmt.Errorf("%s needs root here: it runs Nix (to evaluate and build the fleet), and with no nix-daemon this user may use, Nix writes /nix/store and /nix/var/nix itself, which root owns; run it as root (sudo %s …), or run nix-daemon and let this user use it (nix.settings.allowed-users) (Nix said: %s)", command, command, said)
	code := exitFailed
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	return &exitError{code: code, err: hint}
}

// commandName is "bento deploy" for the command line args: the first
// word that names one of the app's commands.
func commandName(app *cli.App, args []string) string {
	for _, a := range args[1:] {
		if a == "--" {
			break
		}
		if find(app.Commands, a) != nil {
			return "bento " + a
		}
	}
	return "bento"
}
