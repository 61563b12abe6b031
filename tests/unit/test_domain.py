"""The domain's rules, as plain functions and as pydantic field types."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from cni_bridge import domain
from cni_bridge.domain import (
    MAX_CONTAINER_ID,
    MAX_NETWORK_NAME,
    ContainerID,
    DomainError,
    InterfaceName,
    IPAddress,
    IPInterface,
    IPNetwork,
    MacAddress,
    NetworkName,
    Port,
    VlanId,
    ifname_problem,
    is_id,
    port_range_count,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["eth0", "cni0", "a" * 15, "veth-x_y.z", "br\u00e9"])
def test_usable_interface_names(name: str) -> None:
    assert ifname_problem(name) is None and InterfaceName(name) == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        ("a" * 16, "longer"),
        ("\u00e9" * 8, "longer"),  # 16 bytes in UTF-8: the kernel counts bytes
        (".", "'.'"),
        ("..", "'.'"),
        ("a/b", "'/'"),
        ("a:b", "':'"),
        ("br%d", "'%'"),
        ("a b", "whitespace"),
        ("tab\t", "whitespace"),
        ("nl\n", "whitespace"),
        ("bell\x07", "control"),
    ],
)
def test_unusable_interface_names(name: str, problem: str) -> None:
    found = ifname_problem(name)
    assert found is not None and problem in found
    with pytest.raises(DomainError, match="interface name"):
        InterfaceName(name)


@pytest.mark.parametrize("text", ["abc", "A1", "a_b.c-d", "9"])
def test_ids(text: str) -> None:
    assert is_id(text)


@pytest.mark.parametrize(
    "text", ["", "-a", ".a", "_a", "a b", "a/b", "abc\n", "caf\u00e9", "a\x00"]
)
def test_not_ids(text: str) -> None:
    assert not is_id(text)


def test_network_name_length() -> None:
    assert NetworkName("n" * MAX_NETWORK_NAME)
    for bad in ("n" * (MAX_NETWORK_NAME + 1), "..", "../etc", "net\n"):
        with pytest.raises(DomainError, match="network name"):
            NetworkName(bad)


def test_container_id_length() -> None:
    assert ContainerID("c" * MAX_CONTAINER_ID)
    for bad in ("c" * (MAX_CONTAINER_ID + 1), "", "../x"):
        with pytest.raises(DomainError, match="container ID"):
            ContainerID(bad)


@pytest.mark.parametrize(
    ("text", "norm"),
    [
        ("02:AA:bb:00:00:01", "02:aa:bb:00:00:01"),
        ("02-aa-bb-00-00-01", "02:aa:bb:00:00:01"),
        (" 0a:58:00:00:00:09 ", "0a:58:00:00:00:09"),
    ],
)
def test_macs(text: str, norm: str) -> None:
    mac = MacAddress(text)
    assert mac == norm and type(mac) is MacAddress


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "not a MAC"),
        ("02:aa:bb:00:00", "not a MAC"),
        ("02:aa:bb:00:00:01:02", "not a MAC"),
        ("02:aa:bb:00:00:0g", "not a MAC"),
        ("2:aa:bb:00:00:01", "not a MAC"),
        ("02aabb000001", "not a MAC"),
        ("01:00:5e:00:00:01", "multicast"),
        ("ff:ff:ff:ff:ff:ff", "multicast"),
    ],
)
def test_not_macs(text: str, why: str) -> None:
    with pytest.raises(DomainError, match=why):
        MacAddress(text)


def test_ports_and_ranges() -> None:
    assert Port(1) == 1 and Port(65535) == 65535
    for bad in (0, -1, 65536):
        with pytest.raises(DomainError, match="outside 1-65535"):
            Port(bad)
    assert port_range_count(80, None, 8080) == 1
    assert port_range_count(9000, 9002, 90) == 3
    assert port_range_count(65530, 65535, 65530) == 6
    with pytest.raises(DomainError, match="below its start"):
        port_range_count(80, 79, 80)
    with pytest.raises(DomainError, match="beyond 65535"):
        port_range_count(9000, 9002, 65534)


def test_vlan_ids() -> None:
    assert VlanId(1) == 1 and VlanId(4094) == 4094
    for bad in (0, 4095, -1):
        with pytest.raises(DomainError, match="outside 1-4094"):
            VlanId(bad)


class _Model(BaseModel):
    ifname: InterfaceName = InterfaceName("eth0")
    network: NetworkName = NetworkName("n")
    cid: ContainerID = ContainerID("c")
    mac: MacAddress | None = None
    port: Port = Port(80)


def test_the_pydantic_forms_apply_the_same_rules() -> None:
    m = _Model.model_validate({"ifname": "cni1", "mac": "0A-58-00-00-00-09", "port": "8080"})
    assert (m.ifname, m.mac, m.port) == ("cni1", "0a:58:00:00:00:09", 8080)
    assert (type(m.ifname), type(m.mac), type(m.port)) == (InterfaceName, MacAddress, Port)
    assert m.model_dump_json() == (
        '{"ifname":"cni1","network":"n","cid":"c","mac":"0a:58:00:00:00:09","port":8080}'
    )
    for field, value, text in [
        ("ifname", "br%d", "'%'"),
        ("ifname", 5, "string"),
        ("network", "n" * 65, "at most 64"),
        ("cid", "a/b", "container ID"),
        ("mac", "01:00:00:00:00:00", "multicast"),
        ("port", 0, "outside"),
    ]:
        with pytest.raises(ValidationError) as err:
            _Model.model_validate({field: value})
        assert err.value.errors()[0]["loc"] == (field,) and text in str(err.value), err.value


def test_importing_the_domain_imports_nothing_heavy() -> None:
    # The libcni client and the protocol layer use the name rules; the IP aliases bring in
    # `ipaddress` on first use only.
    code = (
        "import sys; import cni_bridge.domain as d; "
        "heavy = {'typing', 'ipaddress', 'pydantic_core'} & set(sys.modules); "
        "assert not heavy, heavy; d.IPAddress; assert 'ipaddress' in sys.modules"
    )
    subprocess.run([sys.executable, "-S", "-c", code], check=True, env={"PYTHONPATH": str(ROOT)})


def test_the_ip_aliases() -> None:
    assert isinstance(ipaddress.ip_address("::1"), IPAddress)
    assert isinstance(ipaddress.ip_network("10.0.0.0/8"), IPNetwork)
    assert isinstance(ipaddress.ip_interface("10.0.0.1/8"), IPInterface)
    with pytest.raises(AttributeError):
        getattr(domain, "IPAdress")  # noqa: B009 - a typo is still an AttributeError
