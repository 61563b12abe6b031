"""Container DNS (`"containerDNS"` on a network): names of the network's containers served on
its gateway addresses by aardvark-dns, netavark's name server, with everything else forwarded.

- names.py (pure): which names a container gets, the aardvark-dns config file of a network
  (line 1: the addresses to listen on and the upstream servers; then one line per container),
  reading one back for an edit, the resolvers of a resolv.conf;
- aardvark.py: our own config directory (one per host network namespace, never podman's) and
  the server process: started if not running, SIGHUP to reload, ended with the last network;
- ops.py: what ADD and DEL do (publish, withdraw), behind the `DnsOps` Protocol;
- rebuild.py: every network's file again from the attachment records (after a reboot or an
  agent restart), and the agent's supervision of the server.

No DNS wire code of our own: aardvark-dns answers and forwards.
"""
