"""cni-bridge: a CNI bridge plugin with host-local IPAM, masquerade and port mappings."""

__version__ = "0.1.0"
PLUGIN_NAME = "cni-bridge"
