package rollout

import (
	"context"
	"fmt"
	"time"

	"github.com/bento-nix/bento/history"
)

// historyTimeout bounds recording: the database is local, so this is only
// reached when another process holds its lock.
const historyTimeout = 30 * time.Second

// record adds a step to the server's history (bento history) after the
// record is saved. A failure only costs the history its line: it is
// printed as a warning, never undoes the step.
func record(ctx context.Context, root string, s history.RolloutStep, print func(string)) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), historyTimeout)
	defer cancel()
	db, err := history.Open(ctx, history.Path(root))
	if err == nil {
		defer db.Close()
		err = db.RecordRolloutStep(ctx, s)
	}
	if err != nil && print != nil {
		print(fmt.Sprintf("warning: rollout %s: %v (the step happened; bento history misses it)", s.RolloutID, err))
	}
}

// published names the hosts of wave i the rollout published to.
func (st *State) publishedHosts(i int) []string {
	var out []string
	for _, n := range st.Waves[i].Hosts {
		if h := st.host(n); h != nil && h.Version != "" {
			out = append(out, n)
		}
	}
	return out
}
