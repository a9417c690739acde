"""Every ```python example of docs/client.md runs, as written, against the real broker and a
worker on test:///default (the examples assert what they show)."""

from __future__ import annotations

import re
from contextlib import redirect_stdout
from io import StringIO
from typing import Any

import libvirt
import pytest

from tests.support import BROKER, REPO
from worker import logs

DOC = REPO / "docs" / "client.md"
EXAMPLES = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), re.S | re.M)


def _title(code: str) -> str:
    """The heading above an example, for its test id."""
    text = DOC.read_text()
    before = text[: text.index(code)]
    return re.findall(r"^## (.+)$", before, re.M)[-1]


@pytest.fixture(autouse=True)
def _worker_logs_quiet() -> None:
    logs.configure("warning", json=False)


def test_the_doc_has_the_examples_it_promises():
    titles = [_title(code) for code in EXAMPLES]
    assert titles == [
        "Start a VM and wait for it",
        "A failure, and a timeout that leaves the request alone",
        "Watch a host or a VM",
        "Replay",
        "asyncio",
    ]


@pytest.mark.parametrize("code", EXAMPLES, ids=[_title(c) for c in EXAMPLES])
def test_example_runs(code: str, env: Any, start_worker: Any, test_domains: list[str], monkeypatch):
    start_worker()
    monkeypatch.setenv("VMWORKER_BROKER", BROKER)
    monkeypatch.setenv("VMWORKER_PREFIX", env.prefix)
    monkeypatch.setenv("EXAMPLE_HOST", env.host)
    conn = libvirt.open("test:///default")
    before = set(conn.listDefinedDomains()) | {d.name() for d in conn.listAllDomains()}
    out = StringIO()
    try:
        with redirect_stdout(out):
            exec(compile(code, str(DOC), "exec"), {"__name__": "__main__"})
    finally:
        for dom in conn.listAllDomains():  # what the example made goes
            if dom.name() not in before:
                test_domains.append(dom.UUIDString())
        conn.close()
    assert out.getvalue().strip(), "an example prints what it shows"
