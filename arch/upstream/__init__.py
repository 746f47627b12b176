"""Upstream: the gateway's own HTTP/1.1 client to providers (pooled sockets, timeouts, cancel)."""
