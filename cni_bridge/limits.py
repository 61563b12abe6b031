"""Bounds on what a caller can hand us. No imports: the thin client reads this.

The one stdin bound: the engine refuses a larger network config (protocol/request.py), the
readers read one byte more to tell (cli.py, build/launcher.c), and the resident's frames carry
at most that much (resident/protocol.py).
"""

MAX_STDIN_BYTES = 1 << 20
# CNI_ARGS, longer than any runtime sends (the engine refuses more, protocol/request.py).
MAX_CNI_ARGS = 64 * 1024
