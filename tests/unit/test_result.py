import ipaddress

import pytest

from cni_bridge.errors import CNIError
from cni_bridge.protocol.result import DNS, Interface, IPConfig, Result, Route, parse_result
from cni_bridge.protocol.versions import SUPPORTED_VERSIONS
from tests.unit.golden_util import assert_golden


def sample() -> Result:
    return Result(
        interfaces=[
            Interface(name="cni0", mac="0a:58:0a:58:00:01", mtu=1500),
            Interface(name="vethcb1234", mac="0a:58:0a:58:00:02", mtu=1500),
            Interface(name="eth0", mac="0a:58:0a:58:00:03", mtu=1500, sandbox="/run/netns/c1"),
        ],
        ips=[
            IPConfig(ipaddress.ip_interface("10.88.0.5/16"), ipaddress.ip_address("10.88.0.1"), 2),
            IPConfig(ipaddress.ip_interface("fd00:88::5/64"), ipaddress.ip_address("fd00:88::1"), 2),
        ],
        routes=[
            Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("10.88.0.1")),
            Route(ipaddress.ip_network("::/0"), ipaddress.ip_address("fd00:88::1")),
            Route(ipaddress.ip_network("192.168.50.0/24"), mtu=1400),
        ],
        dns=DNS(nameservers=["10.88.0.1"], search=["example.test"]),
    )


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_render_matches_golden(version: str) -> None:
    assert_golden(f"result/{version}.json", sample().render(version))


def test_v1_has_no_ip_version_and_v04_has_it() -> None:
    assert "version" not in sample().render("1.0.0")["ips"][0]
    assert sample().render("0.4.0")["ips"][0]["version"] == "4"
    assert sample().render("0.3.0")["ips"][1]["version"] == "6"


def test_v11_only_fields() -> None:
    r10 = sample().render("1.0.0")
    r11 = sample().render("1.1.0")
    assert "mtu" not in r10["interfaces"][0] and r11["interfaces"][0]["mtu"] == 1500
    assert "mtu" not in r10["routes"][2] and r11["routes"][2]["mtu"] == 1400


def test_020_flat_form_takes_first_address_per_family() -> None:
    out = sample().render("0.2.0")
    assert out["ip4"] == {
        "ip": "10.88.0.5/16",
        "gateway": "10.88.0.1",
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}, {"dst": "192.168.50.0/24"}],
    }
    assert out["ip6"]["ip"] == "fd00:88::5/64"
    assert "interfaces" not in out and "ips" not in out


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_round_trip_any_version(version: str) -> None:
    rendered = sample().render(version)
    parsed = parse_result(rendered, version)
    assert parsed.render(version) == rendered


def test_up_conversion_from_020() -> None:
    parsed = parse_result(sample().render("0.2.0"), "0.2.0")
    out = parsed.render("1.0.0")
    assert [ip["address"] for ip in out["ips"]] == ["10.88.0.5/16", "fd00:88::5/64"]
    assert {r["dst"] for r in out["routes"]} == {"0.0.0.0/0", "::/0", "192.168.50.0/24"}


def test_empty_result_renders_dns_object() -> None:
    assert Result().render("1.0.0") == {"cniVersion": "1.0.0", "dns": {}}


@pytest.mark.parametrize(
    "bad",
    [
        {"cniVersion": "1.0.0", "ips": [{"address": "nonsense"}]},
        {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24", "interface": 3}]},
        {"cniVersion": "1.0.0", "interfaces": [{"mac": "x"}]},
        {"cniVersion": "1.0.0", "routes": [{"gw": "10.0.0.1"}]},
        "not an object",
    ],
)
def test_bad_prev_result(bad: object) -> None:
    with pytest.raises(CNIError) as err:
        parse_result(bad, "1.0.0")
    assert err.value.code == 6


def test_unknown_version_in_prev_result() -> None:
    with pytest.raises(CNIError) as err:
        parse_result({"cniVersion": "9.9.9"}, "1.0.0")
    assert err.value.code == 1
