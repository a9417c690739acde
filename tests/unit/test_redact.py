"""Secrets in operation messages: which fields are secret, read from the models; a body shown
with them masked even when it is invalid; log lines scrubbed while a job holds its secrets."""

from __future__ import annotations

import json
import uuid

import structlog

from handlers.message import secret_paths
from handlers.operations import OPERATIONS
from worker import redact
from worker.messages import parse_operation, redact_body

VM = {"uuid": str(uuid.uuid4())}


def test_the_secret_fields_are_read_from_the_models() -> None:
    found = {name: secret_paths(o.message) for name, o in OPERATIONS.items()}
    assert {name: paths for name, paths in found.items() if paths} == {
        "set_ticket": (("params", "password"),)
    }


def test_a_parsed_message_names_its_secrets_and_never_prints_them() -> None:
    body = {"op": "set_ticket", "vm": VM, "params": {"password": "pw-1234"}}
    op = parse_operation(json.dumps(body).encode(), max_bytes=4096)
    assert op.secrets() == ["pw-1234"]
    assert "pw-1234" not in repr(op) and "pw-1234" not in op.model_dump_json()
    assert "format" in json.dumps(type(op).model_json_schema())  # "format": "password"


def test_a_body_is_shown_with_its_secrets_masked_valid_or_not() -> None:
    for params in ({"password": "pw-1234"}, {"password": "pw-1234", "valid_s": "x", "bad": 1}):
        doc = {"op": "set_ticket", "vm": VM, "params": params}
        shown = redact_body(doc)
        assert shown["params"]["password"] == "***" and doc["params"]["password"] == "pw-1234"
    other = {"op": "start_vm", "vm": VM}
    assert redact_body(other) == other


def test_log_lines_are_scrubbed_while_a_job_holds_its_secrets(capsys) -> None:
    from worker import logs

    logs.configure("info")
    log = structlog.get_logger()
    with redact.holding(["pw-1234"]):
        log.warning("hook.failed", stderr_tail="passwd='pw-1234'", nested={"a": ["pw-1234"]})
    log.info("after", text="pw-1234")  # outside the job: nothing to scrub
    out = capsys.readouterr().err.splitlines()
    assert "pw-1234" not in out[0] and "passwd='***'" in out[0]
    assert "pw-1234" in out[1]


def test_scrub_masks_a_secret_inside_a_longer_one_first() -> None:
    assert redact.scrub("ab abc", ["ab", "abc"]) == "*** ***"
    assert redact.scrub({"k": ("x-abc",)}, ["abc"]) == {"k": ("x-***",)}
