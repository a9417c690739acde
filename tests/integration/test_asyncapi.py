"""docs/asyncapi.yaml validates with the AsyncAPI project's own parser (@asyncapi/parser, pinned
by scripts/asyncapi/package-lock.json and installed into .node/ by `scripts/bootstrap node`, on
Debian's Node.js): zero errors. A document the parser refuses fails with its diagnostics."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from worker.asyncapi import asyncapi_document, to_yaml

ROOT = Path(__file__).resolve().parents[2]
VALIDATE = ROOT / "scripts" / "asyncapi" / "validate.cjs"
PARSER = ROOT / ".node" / "node_modules" / "@asyncapi" / "parser"


def _validate(path: Path) -> tuple[int, list[dict[str, Any]], str]:
    node = shutil.which("node")
    assert node, "no node: run scripts/bootstrap node (it installs Debian's nodejs and npm)"
    assert PARSER.is_dir(), "no AsyncAPI parser in .node/: run scripts/bootstrap node"
    proc = subprocess.run(
        [node, str(VALIDATE), str(path)], capture_output=True, text=True, timeout=120
    )
    diagnostics = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, diagnostics, proc.stderr


def test_the_committed_document_validates_with_the_asyncapi_parser() -> None:
    rc, diagnostics, stderr = _validate(ROOT / "docs" / "asyncapi.yaml")
    errors = [d for d in diagnostics if d["severity"] == "error"]
    warnings = [d for d in diagnostics if d["severity"] == "warning"]
    assert rc == 0 and errors == [], "\n".join(json.dumps(d) for d in errors) + stderr
    assert warnings == [], warnings
    summary = json.loads(stderr.strip().splitlines()[-1])
    doc = asyncapi_document()
    assert summary["asyncapi"] == "3.0.0"
    assert summary["channels"] == len(doc["channels"])
    assert summary["operations"] == len(doc["operations"])
    assert summary["messages"] == len(doc["components"]["messages"])


def test_a_document_the_parser_refuses_fails_with_its_diagnostics(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(asyncapi_document()))
    # a payload that is no schema, and an operation sending a message of another channel
    doc["components"]["schemas"]["StartVm"]["properties"]["op"]["type"] = "text"
    doc["operations"]["sendDeadLetter"]["messages"] = [
        {"$ref": "#/channels/operations/messages/start_vm"}
    ]
    bad = tmp_path / "asyncapi.yaml"
    bad.write_text(to_yaml(doc))
    assert yaml.safe_load(bad.read_text()) == doc
    rc, diagnostics, stderr = _validate(bad)
    assert rc == 1, stderr
    errors = {(d["code"], d["path"]) for d in diagnostics if d["severity"] == "error"}
    assert ("asyncapi-document-resolved", "components.schemas.StartVm.properties.op.type") in errors
    assert (
        "asyncapi3-operation-messages-from-referred-channel",
        "operations.sendDeadLetter.messages.0",
    ) in errors
    assert "not a valid AsyncAPI document" in stderr
