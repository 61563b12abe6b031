"""Nodes of a cluster: routes to the other nodes' pod CIDRs (host-gw) and the Kubernetes mode.

`peers` parses the peer list, `routeplan` decides (pure), `netlink` touches the kernel
(pyroute2), `routes` is the `cni-bridge routes` command, `kube` the `cni-bridge kube` one.
"""
