"""docs/spec.md's generated reference matches the models and rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_spec_doc_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-spec-doc"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_spec_doc_lists_every_model_and_rule() -> None:
    from handlers.spec import RULES, VmSpec

    text = (ROOT / "docs" / "spec.md").read_text()
    for name in VmSpec.model_json_schema()["$defs"]:
        assert f"### {name}" in text
    for rules in RULES.values():
        for fn in rules:
            assert f"(`{fn.__name__}`)" in text
