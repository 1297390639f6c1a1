"""The generated gRPC package matches what scripts/gen_protos.py produces from protos/."""

from __future__ import annotations

import filecmp
from pathlib import Path

from scripts.gen_protos import generate
from tests.conftest import REPO


def test_generated_code_has_no_drift(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    committed = REPO / "clipsearch" / "v1"
    assert {p.name for p in fresh} == {p.name for p in committed.iterdir() if p.suffix in {".py", ".pyi"}}
    drifted = [p.name for p in fresh if not filecmp.cmp(p, committed / p.name, shallow=False)]
    assert drifted == [], f"regenerate with `make protos`: {drifted}"
