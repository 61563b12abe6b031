"""Bounds on what a caller can hand us. No imports: the thin client reads this."""

MAX_STDIN_BYTES = 1 << 20
