"""Held ports, docker-proxy's way: for every published host port the host holds a socket.

- model.py (pure): which sockets a record's port mappings call for, and where their proxy
  relays; the plan that turns held sockets into wanted ones.
- lookup.py: who holds a port, from /proc/net/{tcp,tcp6,udp,udp6} and /proc/*/fd.
- check.py: ADD's check that no host program holds a published port (in the plugin).
- control.py: the holder's control socket, as the plugin and `status` reach it.
- records.py: the desired state, from the attachment records, indexed by socket.
- holder.py, proxy.py, loop.py: the holder (a selector loop) and its relays.
- duty.py: the holder run by the agent's own loop: started, restarted after a failure, stopped.

The socket makes the kernel refuse a host program's bind; DNAT (prerouting and output) still
takes outside and 127.0.0.1 traffic to the container before it could reach the socket, so
what the socket sees is what DNAT leaves: [::1] (IPv6 has no route_localnet), and the host's
IPv6 addresses when the container has no IPv6 address. The proxy relays that.
"""
