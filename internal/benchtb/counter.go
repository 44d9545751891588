package benchtb

import (
	"context"
	"net"
	"sync/atomic"
)

// Counter counts the bytes of every TCP connection it dials, both ways:
// TCP payload, SSH handshake and keepalives included.
type Counter struct{ In, Out atomic.Int64 }

// Dial is a net.Dialer's DialContext whose connections count into c.
func (c *Counter) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &countedConn{Conn: conn, c: c}, nil
}

type countedConn struct {
	net.Conn
	c *Counter
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.c.In.Add(int64(n))
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.c.Out.Add(int64(n))
	return n, err
}
