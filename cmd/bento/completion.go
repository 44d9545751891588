package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script (bash or zsh)",
		ArgsUsage: "bash|zsh",
		Description: "bash: source <(bento completion bash)\n" +
			"zsh:  source <(bento completion zsh)",
		Action: func(c *cli.Context) error {
			switch c.Args().First() {
			case "bash":
				_, err := fmt.Fprint(c.App.Writer, bashCompletion)
				return err
			case "zsh":
				_, err := fmt.Fprint(c.App.Writer, "autoload -U compinit && compinit\nautoload -U bashcompinit && bashcompinit\n"+bashCompletion)
				return err
			default:
				return usageError("completion: say which shell: bento completion bash (or zsh)")
			}
		},
	}
}

// bashCompletion asks bento itself (urfave/cli's --generate-bash-completion).
const bashCompletion = `_bento_complete() {
  local cur words
  COMPREPLY=()
  cur="${COMP_WORDS[COMP_CWORD]}"
  words=$("${COMP_WORDS[0]}" "${COMP_WORDS[@]:1:$COMP_CWORD-1}" --generate-bash-completion 2>/dev/null)
  COMPREPLY=($(compgen -W "${words}" -- "${cur}"))
  return 0
}
complete -o default -F _bento_complete bento
`
