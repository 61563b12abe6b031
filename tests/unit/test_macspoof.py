from cni_bridge.firewall import macspoof
from tests.unit.golden_util import assert_golden


def test_first_add_renders_layout_and_elements() -> None:
    assert_golden("firewall/macspoof_add_first.json", macspoof.add("vcb0123456789ab", "0A:58:0A:00:00:02", True))


def test_later_add_is_elements_only() -> None:
    cmds = macspoof.add("vcb0123456789ab", "0a:58:0a:00:00:02", False)
    assert [next(iter(c)) for c in cmds] == ["add", "add"]
    assert all("element" in c["add"] for c in cmds)


def test_delete_is_delete_if_present() -> None:
    assert_golden("firewall/macspoof_delete.json", macspoof.delete("vcb0123456789ab", "0a:58:0a:00:00:02"))
