package transport

// Addr is the server an offline bundle came from: none. A report applied
// from a bundle names no server.
func (l *Local) Addr() string { return "" }
