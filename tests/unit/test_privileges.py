from __future__ import annotations

import pytest

from cni_bridge import privileges
from cni_bridge.errors import PERMISSION_DENIED, CNIError

ROOT = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n"
NOBODY = "Name:\tx\nCapEff:\t0000000000000000\n"
NET_ADMIN_ONLY = "CapEff:\t0000000000001000\n"


def test_missing_reads_the_effective_set() -> None:
    assert privileges.missing(ROOT) == []
    assert privileges.missing(NOBODY) == ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
    assert privileges.missing(NET_ADMIN_ONLY) == ["CAP_SYS_ADMIN"]
    assert privileges.missing("garbage") == ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]


def test_require_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privileges, "missing", lambda text: ["CAP_NET_ADMIN"])
    with pytest.raises(CNIError) as err:
        privileges.require()
    assert err.value.code == PERMISSION_DENIED and "root" in err.value.msg
    assert "CAP_NET_ADMIN" in err.value.msg
