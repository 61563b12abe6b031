"""The node agent (`cni-bridge serve`) and the callers' side of it.

The caller's side, imported by every exec'd plugin, imports nothing beyond the standard library's
cheapest modules: `client` (the exchange), `spawn` (starting an agent), `protocol` (framing),
`policy` (every decision, once), `naming` (identity and socket). The agent: `server` (start),
`pool` (the parent), `worker` and `running` (one request), `admission` (who may call), `sweep`
(files of agents killed with their namespace).
build/launcher.c speaks `protocol` natively, with constants generated from `naming`.
"""
