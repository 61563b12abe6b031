"""The lean validator (leanconf.py, an exec'd process's) against the pydantic models (config.py,
the definition, the agent's): the same structure, and the same answers on the examples, the
config tests' cases (tests/unit/test_config.py goes through tests/unit/confdiff.py) and
generated configs."""

from __future__ import annotations

import inspect
import json
import math
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from cni_bridge import config, leanconf, leantypes
from tests.unit.confdiff import compare

CONF = Path(__file__).resolve().parents[2] / "conf"

# --- the table is the models' ------------------------------------------------------------------


def _render(t: Any) -> str:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_render(a) for a in args)
    if origin is list:
        return f"list[{_render(args[0])}]"
    if origin is dict:
        return f"dict[{_render(args[0])}, {_render(args[1])}]"
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if t is Any:
        return "Any"
    if t is type(None):
        return "None"
    return str(t.__name__)


def _model_default(fi: Any) -> Any:
    if fi.default_factory is not None:
        return ("new", fi.default_factory.__name__)
    if fi.is_required():
        return "required"
    return ("value", type(fi.default).__name__, repr(fi.default))


def _lean_default(f: leantypes.Field) -> Any:
    if f.default is leantypes.REQUIRED:
        return "required"
    if isinstance(f.default, leantypes.Model):
        return ("new", f.default.text)
    if f.default in (list, dict):
        return ("new", f.default.__name__)
    return ("value", type(f.default).__name__, repr(f.default))


def _lean_bounds(t: leantypes.Type) -> list[tuple[str, int]]:
    t = t.inner if isinstance(t, leantypes.Optional) else t
    if isinstance(t, leantypes.Int):
        return [(k, v) for k, v in (("ge", t.ge), ("le", t.le)) if v is not None]
    return []


def _model_bounds(fi: Any) -> list[tuple[str, int]]:
    out = []
    for m in fi.metadata:
        for k in ("ge", "le"):
            if hasattr(m, k):
                out.append((k, getattr(m, k)))
    return out


def model_table(cls: type[BaseModel]) -> dict[str, Any]:
    decorators = cls.__pydantic_decorators__
    validators = {
        (field, d.info.mode): d.func
        for d in decorators.field_validators.values()
        for field in d.info.fields
    }
    model_validators = {d.info.mode: d.func for d in decorators.model_validators.values()}
    return {
        "fields": [
            (name, fi.alias, _render(fi.annotation), _model_bounds(fi), _model_default(fi))
            for name, fi in cls.model_fields.items()
        ],
        "validators": validators,
        "model": sorted(model_validators),
        "before": model_validators.get("before"),
        "after": model_validators.get("after"),
        "extra": (cls.model_config.get("extra"), cls.model_config.get("populate_by_name"),
                  cls.model_config.get("frozen")),
    }


def lean_table(spec: leantypes.Model) -> dict[str, Any]:
    validators = {}
    for f in spec.fields:
        for mode in ("before", "after"):
            if getattr(f, mode) is not None:
                validators[(f.name, mode)] = getattr(f, mode)
    modes = [m for m in ("after", "before") if getattr(spec, m) is not None]
    return {
        "fields": [
            (f.name, f.alias, f.type.text, _lean_bounds(f.type), _lean_default(f))
            for f in spec.fields
        ],
        "validators": validators,
        "model": modes,
        "before": spec.before,
        "after": spec.after,
        "extra": ("ignore", True, True),  # unknown keys ignored, name or alias, frozen objects
    }


@pytest.mark.parametrize("spec", leanconf.MODELS, ids=lambda s: s.text)
def test_lean_table_is_the_models(spec: leantypes.Model) -> None:
    cls = getattr(config, spec.text)
    model, lean = model_table(cls), lean_table(spec)
    # A model's `after` check is a method (pydantic passes the instance) that calls the rule.
    after = model.pop("after")
    lean_after = lean.pop("after")
    if after is not None:
        assert f"rules.{lean_after.__name__}(self)" in inspect.getsource(after)
    assert model == lean
    assert spec.cls.__name__ == spec.text
    assert sorted(vars(spec.cls)["__slots__"]) == sorted(cls.model_fields)


def test_every_model_is_in_the_table() -> None:
    models = {n for n, v in vars(config).items()
              if isinstance(v, type) and issubclass(v, config._Model) and v is not config._Model}
    assert models == {m.text for m in leanconf.MODELS}


def test_lean_objects_are_frozen() -> None:
    conf = leanconf.load_netconf({"name": "n"})
    with pytest.raises(AttributeError):
        setattr(conf, "name", "m")  # noqa: B010 - mypy would refuse the plain assignment
    with pytest.raises(AttributeError):
        setattr(conf.ipam, "type", "x")  # noqa: B010


def test_the_exec_path_picks_the_lean_validator_unless_pydantic_is_loaded() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from cni_bridge.netconf import load_netconf; "
        "c = load_netconf({'name': 'n'}); "
        "assert type(c).__module__ == 'cni_bridge.leanconf', type(c); "
        "assert not {'pydantic', 'pydantic_core'} & set(sys.modules); "
        "import cni_bridge.config; "
        "assert type(load_netconf({'name': 'n'})).__module__ == 'cni_bridge.config'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=CONF.parent)


def test_the_lean_modules_are_cheap_to_import() -> None:
    import subprocess
    import sys

    code = (
        "import sys; before = set(sys.modules); import cni_bridge.leanconf; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=CONF.parent,
                         capture_output=True, text=True).stdout.split()
    assert not [m for m in out if m.startswith(("pydantic", "typing_extensions", "annotated"))]


# --- the same answers ----------------------------------------------------------------------------


def _plugin_configs(path: Path) -> list[dict[str, Any]]:
    conflist = json.loads(path.read_text())
    return [{"cniVersion": conflist["cniVersion"], "name": conflist["name"], **p}
            for p in conflist["plugins"] if p["type"] == "cni-bridge"]


@pytest.mark.parametrize(
    "path", sorted(CONF.glob("*.conflist")) + sorted((CONF / "invalid").glob("*.conflist")),
    ids=lambda p: p.name,
)
def test_examples_agree(path: Path) -> None:
    for c in _plugin_configs(path):
        compare(c)


NAN, INF = math.nan, math.inf
NUMBERS = st.one_of(
    st.integers(-3, 70000),
    st.sampled_from([0, 1, 68, 67, 65535, 65536, 4094, 4095, 2**63, -(2**63), 10**30]),
    st.sampled_from([0.0, 1.0, -0.0, 0.5, 2.0, 1400.0, 1e20, 2.0**63, NAN, INF, -INF]),
)
NUMERIC_TEXT = st.sampled_from([
    "1400", " 1400 ", "1_400", "_1", "1__4", "+80", "-1", "1400.0", "1400.", "1.5", "1e3", "0x10",
    "", " ", "\xa012", "\x1c12", "٤", "00080", "9" * 25, "true", "yes", "ON", "f", "No", "2",
])
TEXT = st.one_of(NUMERIC_TEXT, st.text(max_size=6))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6)


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, sometimes anything JSON holds."""
    return st.one_of(valid, valid, valid, JSON)


BOOLISH = maybe(st.sampled_from([True, False, 0, 1, 2, "true", "False", "yes", "x", None, 1.0, 2**63, -(2**63)]))
CIDRS = st.sampled_from([
    "10.0.0.0/24", "10.0.1.0/24", "10.0.0.0/25", "10.1.0.0/16", "fd00::/64", "fd00:1::/64",
    "10.0.0.5/24", "fd00::5/64", "10.0.0.0/33", "10.0.0.0/31", "10.0.0.0/30", "::ffff:0:0/96",
    "nonsense", "", "0.0.0.0/0", "::/0", "10.0.0.0", "fe80::/64",
])
ADDRS = st.sampled_from([
    "10.0.0.1", "10.0.0.2", "10.0.0.254", "10.0.0.255", "10.0.1.1", "fd00::1", "fd00::ffff",
    "fe80::1", "fe80::1%eth0", "x", "", None, "10.0.0.0", "2001:db8::1",
])
PORTS = maybe(st.one_of(st.integers(-1, 65537), st.sampled_from([1, 80, 65535, "80", 8080.0])))


def opt(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {k: v for k, v in required.items()},
        optional={**optional, "unknownKey": JSON},
    )


RANGE = maybe(opt({"subnet": maybe(CIDRS)}, {
    "rangeStart": maybe(ADDRS), "rangeEnd": maybe(ADDRS), "gateway": maybe(ADDRS),
    "range_start": maybe(ADDRS),
}))
RANGES = maybe(st.lists(maybe(st.lists(RANGE, min_size=1, max_size=2)), max_size=2))
ROUTE = maybe(opt({"dst": maybe(CIDRS)}, {"gw": maybe(ADDRS)}))
IPAM = maybe(opt({}, {
    "type": maybe(st.sampled_from(["host-local", "", "dhcp"])), "ranges": RANGES,
    "subnet": maybe(CIDRS), "rangeStart": maybe(ADDRS), "rangeEnd": maybe(ADDRS),
    "gateway": maybe(ADDRS), "routes": maybe(st.lists(ROUTE, max_size=2)),
    "dataDir": maybe(st.sampled_from(["/var/lib/x", "relative", ""])),
    "resolvConf": maybe(st.just("/etc/resolv.conf")), "data_dir": maybe(st.just("/y")),
}))


@st.composite
def port_mapping(draw: st.DrawFn) -> Any:
    out: dict[str, Any] = {}
    for key, value in [("hostPort", PORTS), ("containerPort", PORTS), ("hostPortEnd", PORTS),
                       ("protocol", maybe(st.sampled_from(["tcp", "udp", "sctp", "TCP", "Udp",
                                                           "icmp", ""]))),
                       ("hostIP", maybe(ADDRS))]:
        if draw(st.integers(0, 3)) == 0:
            continue
        spelling = draw(st.sampled_from([key, key.lower(), key.upper(), key[0].upper() + key[1:]]))
        out[spelling] = draw(value)
    if draw(st.booleans()):
        out[draw(st.text(max_size=4))] = draw(JSON)
    return out


PORT_MAPPINGS = maybe(st.lists(maybe(port_mapping()), max_size=3))
RUNTIME = maybe(opt({}, {
    "portMappings": PORT_MAPPINGS, "ips": maybe(st.lists(TEXT, max_size=2)),
    "mac": maybe(st.sampled_from(["0a:58:00:00:00:09", "0A-58-00-00-00-09", "01:00:00:00:00:01",
                                  "zz", "", None])),
    "ipRanges": RANGES,
    "aliases": maybe(st.one_of(st.none(), st.dictionaries(
        st.sampled_from(["n", "net1"]), st.lists(TEXT, max_size=2), max_size=2))),
    "port_mappings": PORT_MAPPINGS,
}))
CONTAINER_DNS = maybe(st.one_of(st.sampled_from([True, False, None]), opt({}, {
    "domain": maybe(st.sampled_from(["dns.cni-bridge", "Example.COM", "-bad", "a..b", ""])),
    "upstream": maybe(st.lists(ADDRS, max_size=2)),
})))
VLANS = maybe(st.one_of(st.integers(-1, 4096), st.sampled_from([0, 0.0, False, True, "7", ""])))
NETCONF = opt({}, {
    "cniVersion": maybe(st.sampled_from(["1.0.0", "1.1.0", "0.4.0", "0.1.0", "9.9.9", "x"])),
    "name": maybe(st.sampled_from(["n", "net1", "aardvark.pid", "bad name", "", "n" * 65])),
    "type": maybe(st.just("cni-bridge")),
    "bridge": maybe(st.sampled_from(["cb0", "x" * 16, "bad/x", "br%d", ""])),
    "isGateway": BOOLISH, "isDefaultGateway": BOOLISH, "forceAddress": BOOLISH,
    "ipMasq": BOOLISH, "hairpinMode": BOOLISH, "promiscMode": BOOLISH, "macspoofchk": BOOLISH,
    "ipspoofchk": BOOLISH, "enabledad": BOOLISH, "ipv6LinkLocal": BOOLISH,
    "portIsolation": BOOLISH, "isolation": BOOLISH, "internal": BOOLISH, "is_gateway": BOOLISH,
    "nonMasqueradeCIDRs": maybe(st.lists(CIDRS, max_size=2)),
    "mtu": maybe(st.one_of(st.none(), NUMBERS, NUMERIC_TEXT)),
    "vlan": VLANS, "vlanTrunk": maybe(st.lists(VLANS, max_size=2)),
    "containerDNS": CONTAINER_DNS,
    "dns": maybe(opt({}, {"nameservers": maybe(st.lists(TEXT, max_size=2)),
                          "domain": TEXT, "search": maybe(st.lists(TEXT, max_size=2))})),
    "args": maybe(st.just({"cni": {"ips": ["10.0.0.9"]}})),
    "ipam": IPAM,
    "capabilities": maybe(st.dictionaries(
        st.sampled_from(["portMappings", "ipRanges", "aliases", "ips"]), BOOLISH, max_size=3)),
    "runtimeConfig": RUNTIME,
    "prevResult": maybe(st.one_of(st.none(), st.just({"cniVersion": "1.0.0"}))),
})


# Valid configs of many shapes, then 0-2 mutations anywhere in them: most pass the field checks,
# so the cross checks and the derived values get compared too (NETCONF above is mostly rejected).
VALID = st.fixed_dictionaries(
    {
        "cniVersion": st.sampled_from(["1.0.0", "1.1.0", "0.4.0", "0.3.1"]),
        "name": st.sampled_from(["n", "net1", "aardvark.pid"]),
        "type": st.just("cni-bridge"),
        "ipam": st.one_of(
            st.fixed_dictionaries(
                {"type": st.just("host-local"), "ranges": st.sampled_from([
                    [[{"subnet": "10.0.0.0/24"}]],
                    [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]],
                    [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.20",
                       "gateway": "10.0.0.1"}, {"subnet": "10.0.1.0/24"}]],
                    [[{"subnet": "fd00::/64", "gateway": "fd00::1"}]],
                ])},
                optional={"routes": st.sampled_from([
                    [{"dst": "0.0.0.0/0"}], [{"dst": "::/0"}], [{"dst": "10.9.0.0/16", "gw": "10.0.0.1"}],
                ]), "dataDir": st.just("/tmp/x")},
            ),
            st.just({"type": "host-local", "subnet": "10.1.0.0/16", "rangeStart": "10.1.0.5"}),
            st.just({"type": "dhcp"}),
            st.just({}),
        ),
    },
    optional={
        "isGateway": st.booleans(), "isDefaultGateway": st.booleans(), "ipMasq": st.booleans(),
        "bridge": st.just("cb1"), "mtu": st.sampled_from([1400, 9000]),
        "vlan": st.integers(0, 3), "vlanTrunk": st.lists(st.integers(1, 3), max_size=2),
        "ipspoofchk": st.booleans(), "internal": st.booleans(),
        "containerDNS": st.sampled_from([True, False, {"domain": "Example.Org"},
                                         {"upstream": ["10.0.0.53", "fd00::53"]}]),
        "nonMasqueradeCIDRs": st.just(["10.244.0.0/16"]),
        "capabilities": st.dictionaries(
            st.sampled_from(["portMappings", "ipRanges", "aliases", "ips", "mac"]), st.booleans()),
        "runtimeConfig": st.fixed_dictionaries({}, optional={
            "portMappings": st.just([{"hostPort": 8080, "containerPort": 80},
                                     {"HostPort": 9000, "ContainerPort": 90, "HostPortEnd": 9002,
                                      "Protocol": "UDP", "HostIP": "127.0.0.1"}]),
            "ipRanges": st.just([[{"subnet": "10.5.0.0/24"}]]),
            "aliases": st.just({"n": ["web", "db"], "other": ["x"]}),
            "ips": st.just(["10.0.0.9/24"]), "mac": st.just("0A-58-00-00-00-09"),
        }),
    },
)


def _slots(value: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in a decoded JSON value, nested ones too."""
    out: list[tuple[Any, Any]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else []
    for key, inner in items:
        out.append((value, key))
        out.extend(_slots(inner))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    conf = json.loads(json.dumps(draw(VALID)))
    for _ in range(draw(st.integers(0, 2))):
        container, key = draw(st.sampled_from(_slots(conf)))
        if isinstance(container, dict) and draw(st.booleans()):
            del container[key]
        else:
            container[key] = draw(st.one_of(SCALARS, CIDRS, ADDRS, JSON))
    return conf


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(NETCONF)
def test_generated_configs_agree(data: dict[str, Any]) -> None:
    compare(data)


@settings(max_examples=500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_mutated_valid_configs_agree(data: dict[str, Any]) -> None:
    compare(data)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(JSON)
def test_any_json_agrees(data: Any) -> None:
    compare(data)
