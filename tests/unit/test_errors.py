"""The CNI error codes: each name holds the number runtimes see, and the package uses the names.

The numbers are pinned here, against the specification (SPEC.md "Error") and the README's
table, so that renaming or renumbering in errors.py cannot go unnoticed; the scan below keeps a
bare number from standing in for a code again (cni_bridge/resident/ is left out: the agent's
wire protocol has numbers of its own).
"""

from __future__ import annotations

import ast
from pathlib import Path

from cni_bridge import errors

PACKAGE = Path(__file__).resolve().parents[2] / "cni_bridge"

PINNED = {
    "INCOMPATIBLE_VERSION": 1,
    "UNSUPPORTED_FIELD": 2,
    "UNKNOWN_CONTAINER": 3,
    "INVALID_ENV": 4,
    "IO_FAILURE": 5,
    "DECODE_FAILURE": 6,
    "INVALID_CONFIG": 7,
    "TRY_AGAIN_LATER": 11,
    "STATUS_UNAVAILABLE": 50,
    "STATUS_LIMITED": 51,
    "PORT_CONFLICT": 100,
    "ADDRESS_EXHAUSTED": 101,
    "ADDRESS_CONFLICT": 102,
    "INTERFACE_EXISTS": 103,
    "NETWORK_FAILURE": 104,
    "CHECK_MISMATCH": 105,
    "CLEANUP_FAILED": 106,
    "PERMISSION_DENIED": 107,
    "INTERNAL": 999,
}


def test_every_code_has_its_number() -> None:
    defined = {
        name: value
        for name, value in vars(errors).items()
        if name.isupper() and isinstance(value, int) and not isinstance(value, bool)
    }
    assert defined == PINNED


def _bare_codes(tree: ast.AST) -> list[int]:
    """Lines where a CNIError (or a subclass named *Error) gets a literal number as its code."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        if not name.endswith("Error"):
            continue
        code = node.args[0] if node.args else None
        for kw in node.keywords:
            if kw.arg == "code":
                code = kw.value
        if isinstance(code, ast.Constant) and type(code.value) is int:
            lines.append(node.lineno)
    return lines


def test_the_package_names_its_codes() -> None:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "resident" in path.relative_to(PACKAGE).parts:
            continue
        lines = _bare_codes(ast.parse(path.read_text(), str(path)))
        if lines:
            found[str(path.relative_to(PACKAGE))] = lines
    assert found == {}, f"bare numbers as CNI codes (use cni_bridge.errors' names): {found}"


def test_the_scan_sees_a_bare_code() -> None:
    # The scan above must be able to fail.
    tree = ast.parse("raise CNIError(7, 'x')\nraise CNIError(code=5, msg='y')\nCNIError(INVALID, 'z')")
    assert _bare_codes(tree) == [1, 2]
