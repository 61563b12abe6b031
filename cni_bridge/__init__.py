"""cni-bridge: a CNI bridge plugin with host-local IPAM, masquerade and port mappings."""

import sys as _sys

__version__ = "0.1.0"

if getattr(_sys, "frozen", False):
    # The built binary keeps ctypes out of its module archive, so that PyInstaller's bootstrap
    # does not import it on every start (see build/cni-bridge.spec); the engine finds it here.
    _sys.path.append(_sys._MEIPASS + "/cni_bridge_lazy")  # type: ignore[attr-defined]
