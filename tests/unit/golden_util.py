"""Golden-file comparison; UPDATE_GOLDEN=1 rewrites the files (review the diff before committing)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).parent / "golden"


def assert_golden(name: str, actual: Any) -> None:
    path = GOLDEN / name
    text = json.dumps(actual, indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"golden file {path} missing; run with UPDATE_GOLDEN=1"
    assert json.loads(text) == json.loads(path.read_text()), f"differs from {path}"
