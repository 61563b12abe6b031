"""Warm resident mode: the exec'd plugin forwards its request to a resident process over a unix socket.

`client` is imported by every exec'd plugin, so this package (like `protocol` and `client`) imports
nothing beyond the standard library's cheapest modules. `server` holds the resident itself.
"""
