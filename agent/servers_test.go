package agent

import (
	"reflect"
	"strings"
	"testing"

	"github.com/bento-nix/bento/agent/transport"
)

// serversJSON is what the module writes for services.bento.servers.
const serversJSON = `{
  "host": "alpha",
  "servers": [
    { "address": "primary.example", "port": 2222, "hostKey": "` + hostKey + `" },
    { "address": "10.0.0.7", "hostKey": "[10.0.0.7]:22 ` + hostKey + `", "user": "alpha-on-mirror" }
  ],
  "serverOrder": "ordered"
}`

func TestServersFromModuleJSON(t *testing.T) {
	c := Defaults()
	warnings, err := c.LoadFile(writeConfig(t, serversJSON))
	if err != nil || len(warnings) != 0 {
		t.Fatalf("LoadFile: %v, warnings %v", err, warnings)
	}
	c.Complete()
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	var got []string
	for _, s := range c.ServerList() {
		got = append(got, s.Addr()+" as "+s.User)
	}
	want := []string{"primary.example:2222 as alpha", "10.0.0.7:22 as alpha-on-mirror"}
	if !reflect.DeepEqual(got, want) || c.ServerOrder != ServerOrderOrdered {
		t.Errorf("servers %v (order %s), want %v", got, c.ServerOrder, want)
	}
	eps, err := c.Endpoints()
	if err != nil || len(eps) != 2 || len(eps[1].HostKeys) != 1 {
		t.Errorf("Endpoints: %v, %v", eps, err)
	}
}

// The single-server options are the one-element case.
func TestSingleServerIsTheOneElementCase(t *testing.T) {
	c := Defaults()
	c.Host, c.Server, c.Port, c.ServerHostKey = "alpha", "bento.example", 2200, hostKey
	c.Complete()
	got := c.ServerList()
	if len(got) != 1 || got[0].Addr() != "bento.example:2200" || got[0].User != "alpha" || got[0].HostKey != hostKey {
		t.Errorf("ServerList() = %+v", got)
	}
}

func TestValidateServers(t *testing.T) {
	good := func() Config {
		c := Defaults()
		c.Host = "alpha"
		c.Servers = []ServerEntry{{Address: "a.example", HostKey: hostKey}, {Address: "b.example", Port: 2222, HostKey: hostKey}}
		c.Complete()
		return c
	}
	if c := good(); c.Validate() != nil {
		t.Fatalf("good: %v", c.Validate())
	}
	cases := []struct {
		name   string
		change func(*Config)
		err    string
	}{
		{"both ways at once", func(c *Config) { c.Server = "c.example" }, "both servers and server/serverHostKey are set"},
		{"both keys at once", func(c *Config) { c.ServerHostKey = hostKey }, "both servers and server/serverHostKey are set"},
		{"no address", func(c *Config) { c.Servers[1].Address = "" }, `servers[1]: address "" is not a host name`},
		{"address with a user", func(c *Config) { c.Servers[0].Address = "root@a.example" }, `servers[0]: address "root@a.example"`},
		{"bad port", func(c *Config) { c.Servers[1].Port = 70000 }, "servers[1] (b.example): port 70000 is not a TCP port"},
		{"no key", func(c *Config) { c.Servers[1].HostKey = "" }, "servers[1] (b.example): hostKey: serverHostKey is empty"},
		{"twice", func(c *Config) { c.Servers[1] = c.Servers[0] }, "a.example:22 is listed twice"},
		{"order", func(c *Config) { c.ServerOrder = "random" }, `serverOrder "random" is not sticky or ordered`},
		{"too many", func(c *Config) {
			for len(c.Servers) <= maxServers {
				c.Servers = append(c.Servers, c.Servers[0])
			}
		}, "more than 16"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			tc.change(&c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Validate() = %v, want %q", err, tc.err)
			}
		})
	}
}

func TestOrderServers(t *testing.T) {
	eps := []transport.Endpoint{{Addr: "a:22"}, {Addr: "b:22"}, {Addr: "c:22"}}
	names := func(e []transport.Endpoint) string {
		var s []string
		for _, x := range e {
			s = append(s, x.Addr)
		}
		return strings.Join(s, " ")
	}
	for _, tc := range []struct{ order, last, want string }{
		{ServerOrderSticky, "", "a:22 b:22 c:22"},
		{ServerOrderSticky, "c:22", "c:22 a:22 b:22"},
		{ServerOrderSticky, "b:22", "b:22 a:22 c:22"},
		{ServerOrderSticky, "gone:22", "a:22 b:22 c:22"},
		{ServerOrderOrdered, "c:22", "a:22 b:22 c:22"},
	} {
		if got := names(orderServers(eps, tc.order, tc.last)); got != tc.want {
			t.Errorf("%s after %q: %s, want %s", tc.order, tc.last, got, tc.want)
		}
	}
	if names(eps) != "a:22 b:22 c:22" {
		t.Errorf("orderServers changed its argument: %s", names(eps))
	}
	dir := t.TempDir()
	setLastServer(dir, "b:22")
	if got := lastServer(dir); got != "b:22" {
		t.Errorf("lastServer = %q", got)
	}
}
