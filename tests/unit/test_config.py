import copy
from typing import Any

import pytest

from cni_bridge.errors import CNIError
from cni_bridge.plan import requested_ips, requested_mac
from cni_bridge.protocol.cniargs import parse_cni_args
from tests.unit.confdiff import load_netconf

BASE: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "net1",
    "type": "cni-bridge",
    "bridge": "cb0",
    "isGateway": True,
    "ipMasq": True,
    "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.22.0.0/24"}], [{"subnet": "fd00:22::/64"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
    },
    "capabilities": {"portMappings": True, "ips": True, "mac": True},
}


def conf(**over: Any) -> dict[str, Any]:
    c = copy.deepcopy(BASE)
    for k, v in over.items():
        c[k] = v
    return c


def bad(data: dict[str, Any]) -> CNIError:
    with pytest.raises(CNIError) as err:
        load_netconf(data)
    return err.value


def test_reference_bridge_fields_are_read() -> None:
    n = load_netconf(
        conf(
            mtu=1400,
            hairpinMode=True,
            promiscMode=True,
            vlan=10,
            macspoofchk=True,
            enabledad=True,
            portIsolation=True,
            forceAddress=True,
            isDefaultGateway=True,
            dns={"nameservers": ["10.22.0.1"]},
            somethingUnknown={"x": 1},
        )
    )
    assert (n.mtu, n.hairpin_mode, n.promisc_mode, n.vlan) == (1400, True, True, 10)
    assert n.macspoofchk and n.enabledad and n.port_isolation and n.force_address
    assert n.gateway_mode and n.dns.nameservers == ["10.22.0.1"]
    assert [str(rs[0].subnet) for rs in n.ipam.range_sets()] == ["10.22.0.0/24", "fd00:22::/64"]
    assert str(n.ipam.range_sets()[0][0].gateway) == "10.22.0.1"


def test_legacy_host_local_fields() -> None:
    n = load_netconf(
        conf(
            ipam={
                "type": "host-local",
                "subnet": "10.1.0.0/16",
                "rangeStart": "10.1.0.10",
                "rangeEnd": "10.1.0.20",
                "gateway": "10.1.0.254",
                "dataDir": "/tmp/x",
                "resolvConf": "/etc/resolv.conf",
            }
        )
    )
    (r,) = n.ipam.range_sets()[0]
    assert (str(r.range_start), str(r.range_end), str(r.gateway)) == ("10.1.0.10", "10.1.0.20", "10.1.0.254")
    assert n.ipam.data_dir == "/tmp/x"


def test_defaults() -> None:
    n = load_netconf({"name": "n", "type": "cni-bridge"})
    assert n.cni_version == "0.1.0" and n.bridge == "cni0" and n.ipam.data_dir == "/var/lib/cni/networks"


def test_port_mappings_any_case() -> None:
    n = load_netconf(
        conf(
            runtimeConfig={
                "portMappings": [
                    {"HostPort": 8080, "ContainerPort": 80, "Protocol": "TCP", "HostIP": "127.0.0.1"},
                    {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": ""},
                    {"hostPort": 9000, "containerPort": 90, "hostPortEnd": 9002},
                ]
            }
        )
    )
    pm = n.port_mappings()
    assert [(p.host_port, p.container_port, p.protocol) for p in pm] == [
        (8080, 80, "tcp"),
        (5353, 53, "udp"),
        (9000, 90, "tcp"),
    ]
    assert str(pm[0].host_ip) == "127.0.0.1" and pm[1].host_ip is None and pm[2].count == 3


def test_port_mappings_need_capability() -> None:
    c = conf(capabilities={}, runtimeConfig={"portMappings": [{"hostPort": 1, "containerPort": 1}]})
    assert load_netconf(c).port_mappings() == []


@pytest.mark.parametrize(
    ("override", "field_text"),
    [
        ({"ipam": {"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/33"}]]}}, "subnet"),
        ({"ipam": {"type": "host-local", "ranges": [[{"subnet": "10.0.0.5/24"}]]}}, "host bits"),
        ({"ipam": {"type": "host-local", "ranges": [[{"subnet": "nonsense"}]]}}, "subnet"),
        ({"ipam": {"type": "host-local", "subnet": "10.0.0.0/24", "gateway": "10.9.0.1"}}, "gateway"),
        (
            {"ipam": {"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]]}},
            "overlap",
        ),
        ({"ipam": {"type": "host-local", "subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1"}}, "rangeStart"),
        ({"ipam": {"type": "host-local"}}, "ranges"),
        ({"runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80}]}}, "hostPort"),
        ({"runtimeConfig": {"portMappings": [{"hostPort": 70000, "containerPort": 80}]}}, "hostPort"),
        ({"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]}}, "protocol"),
        ({"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "hostIP": "x"}]}}, "hostIP"),
        ({"mtu": 20}, "mtu"),
        ({"mtu": "big"}, "mtu"),
        ({"vlan": 5000}, "vlan"),
        ({"vlan": -1}, "vlan"),
        ({"vlanTrunk": [10, 4095]}, "vlanTrunk[1]"),
        ({"vlanTrunk": [0]}, "vlanTrunk[0]"),
        ({"bridge": "a-very-long-bridge-name"}, "bridge"),
        ({"bridge": "bad/name"}, "bridge"),
        ({"bridge": "br%d"}, "bridge"),
        ({"name": "n" * 65}, "name"),
        ({"name": "net\n"}, "name"),
        ({"name": "../etc"}, "name"),
        ({"name": 5}, "name"),
        ({"isGateway": "maybe"}, "isGateway"),
        ({"ipam": {"type": "host-local", "subnet": "10.0.0.0/24", "dataDir": "relative"}}, "dataDir"),
        ({"ipam": {"type": "host-local", "subnet": "10.0.0.0/24", "routes": [{"dst": "::/0"}]}}, "routes"),
        ({"nonMasqueradeCIDRs": ["10.244.0.1/16"]}, "nonMasqueradeCIDRs"),
        ({"nonMasqueradeCIDRs": ["cluster"]}, "nonMasqueradeCIDRs"),
        ({"nonMasqueradeCIDRs": "10.244.0.0/16"}, "nonMasqueradeCIDRs"),
    ],
)
def test_config_errors_name_the_field(override: dict[str, Any], field_text: str) -> None:
    err = bad(conf(**override))
    assert err.code == 7
    assert field_text in err.msg, err.msg


def test_non_masquerade_cidrs() -> None:
    n = load_netconf(conf(nonMasqueradeCIDRs=["10.244.0.0/16", "fd00:244::/56"]))
    assert [str(c) for c in n.non_masquerade_cidrs] == ["10.244.0.0/16", "fd00:244::/56"]
    assert load_netconf(conf()).non_masquerade_cidrs == []


def test_unknown_cni_version_is_code_1() -> None:
    assert bad(conf(cniVersion="2.0.0")).code == 1


def test_requested_ips_and_mac_sources() -> None:
    n = load_netconf(
        conf(
            runtimeConfig={"ips": ["10.22.0.9/24"], "mac": "0A-58-00-00-00-09"},
            args={"cni": {"ips": ["fd00:22::9"]}},
        )
    )
    a = parse_cni_args("IgnoreUnknown=1;IP=10.22.0.7")
    assert [str(ip) for ip in requested_ips(n, a)] == ["10.22.0.9", "fd00:22::9", "10.22.0.7"]
    assert requested_mac(n, a) == "0a:58:00:00:00:09"


def test_cni_args() -> None:
    a = parse_cni_args("K8S_POD_NAME=p;IgnoreUnknown=1;FOO=bar;K8S_POD_NAMESPACE=ns;MAC=0a:00:00:00:00:01")
    assert a.pod == {"K8S_POD_NAME": "p", "K8S_POD_NAMESPACE": "ns"} and a.mac == "0a:00:00:00:00:01"
    assert parse_cni_args("").ips == ()
    assert [str(i) for i in parse_cni_args("IP=10.0.0.2,fd00::2").ips] == ["10.0.0.2", "fd00::2"]


@pytest.mark.parametrize(
    "text", ["FOO=bar", "IgnoreUnknown=maybe;FOO=1", "novalue", "IP=300.1.1.1", "MAC=zz", "MAC=01:00:00:00:00:01"]
)
def test_cni_args_errors(text: str) -> None:
    with pytest.raises(CNIError) as err:
        parse_cni_args(text)
    assert err.value.code == 4


def test_vlan_zero_is_no_vlan() -> None:
    # As the reference bridge: 0 means an untagged port, not VLAN 0.
    assert load_netconf(conf(vlan=0)).vlan is None
    assert load_netconf(conf(vlan=7, vlanTrunk=[])).vlan == 7
