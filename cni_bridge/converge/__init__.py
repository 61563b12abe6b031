"""Convergence: the records are the desired state, the kernel the actual one; a sync makes the
host match the records, idempotently.

ADD and DEL apply one attachment's delta. Everything else a real host does (a firewall reload,
`nft flush ruleset`, `iptables -F`, a deleted bridge, a reset sysctl) is answered here:

- desired.py reads the records (what ADD wrote beside host-local's reservations) into the
  networks and attachments the host should carry;
- observe.py reads what the host holds, through the FirewallOps and NetOps protocols;
- planner.py (pure) compares them: every difference as a line for people and the repair that
  heals it (firewall commands, one transaction; bridge, address, port and sysctl steps);
- apply.py carries a plan out; sync.py runs the whole under the networks' locks and is
  `cni-bridge sync`; trigger.py is the cheap drift check of ADD/DEL/CHECK; watch.py is the
  agent's ruleset watch (netlink NFNLGRP_NFTABLES, nfgen.py).
"""
