package agent

import (
	"path/filepath"
	"slices"

	"github.com/bento-nix/bento/agent/transport"
	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/internal/statefile"
)

// lastServerFile holds the "host:port" of the server the agent last
// reached, when several are configured.
const lastServerFile = "last-server"

// lastServer is the server the last tick reached ("" when unknown).
func lastServer(dir string) string {
	data, err := statefile.Read(filepath.Join(dir, lastServerFile), 512)
	if err != nil {
		return ""
	}
	return string(data)
}

// setLastServer records the server reached. Losing it (a crash, a full
// disk) only costs the next tick one attempt at a server that is down.
func setLastServer(dir, addr string) {
	if lastServer(dir) == addr {
		return
	}
	atomicfile.WriteFile(filepath.Join(dir, lastServerFile), []byte(addr), 0o644)
}

// orderServers is the order a tick tries the servers in: with the sticky
// order, the one that worked last comes first (a primary that is down then
// costs nothing until the mirror fails too); the others keep their
// configured order. A last server no longer configured is ignored.
func orderServers(eps []transport.Endpoint, order, last string) []transport.Endpoint {
	i := slices.IndexFunc(eps, func(e transport.Endpoint) bool { return e.Addr == last })
	if order != ServerOrderSticky || i <= 0 {
		return eps
	}
	out := append([]transport.Endpoint{eps[i]}, eps[:i]...)
	return append(out, eps[i+1:]...)
}
