"""The fleet server's HTTP API against a store filled through the real path: two workers on
`test:///default`, the ingest following the real streams (tests/fleetweb.py). Every endpoint and
filter, paging, live events, the actions' token and audit, replay dry run against a real one."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.fleetweb import HOOK_STDERR, HOOK_STDOUT, TOKEN, Fleet, module_fleet
from tests.support import broker_conn, wait_depth, wait_for


@pytest.fixture(scope="module")
def fleet(broker: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with module_fleet(tmp_path_factory.mktemp("fleet")) as f:
        yield f


def _items(doc: dict[str, Any]) -> list[dict[str, Any]]:
    assert set(doc) == {"items", "next"}, doc.keys()
    return doc["items"]


def _audit(fleet: Fleet) -> list[dict[str, Any]]:
    from worker.fleet.store import audit

    with fleet.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(audit).order_by(audit.c.id)).mappings()]


def test_summary_counts_hosts_vms_and_the_failure(fleet: Fleet):
    s = fleet.get("/api/v1/summary")
    assert s["hosts"]["up"] == 2 and s["hosts"]["total"] == 2
    assert s["vms"].get("running", 0) >= 1  # good (and test:///default's own "test")
    assert s["vms"].get("paused") == 1 and s["vms"].get("shutoff", 0) >= 1
    assert s["failures_last_hour"] == 1
    assert s["ops_last_hour"] >= 6
    assert {r["host"] for r in s["hosts_by_failures"]} == {fleet.env.host, fleet.host_b}


def test_hosts_list_filters_and_one_host(fleet: Fleet):
    hosts = _items(fleet.get("/api/v1/hosts"))
    assert [h["host"] for h in hosts] == sorted([fleet.env.host, fleet.host_b])
    assert all(h["status"] == "up" for h in hosts)
    assert _items(fleet.get("/api/v1/hosts", status="down")) == []
    [b] = _items(fleet.get("/api/v1/hosts", q=fleet.host_b[-6:]))
    assert b["host"] == fleet.host_b
    a = fleet.get(f"/api/v1/hosts/{fleet.env.host}")
    assert {v["uuid"] for v in a["vms"]} >= {
        fleet.vms[r]["uuid"] for r in ("good", "paused", "bad", "gone")
    }
    assert {r["request_id"] for r in a["recent_requests"]} >= {fleet.requests["bad"]}
    assert a["heartbeats"] and a["heartbeats"][0]["type"] == "online"
    assert len(a["ops_per_minute"]) == 60
    with fleet.client() as c:
        assert c.get("/api/v1/hosts/no-such-host").status_code == 404


def test_vms_list_filters_and_a_vms_whole_history_with_hook_output(fleet: Fleet):
    vms = _items(fleet.get("/api/v1/vms", limit=500))
    mine = {v["uuid"]: v for v in vms}
    assert mine[fleet.vms["paused"]["uuid"]]["state"] == "paused"
    assert mine[fleet.vms["bad"]["uuid"]]["result"] == "failed"
    on_b = _items(fleet.get("/api/v1/vms", host=fleet.host_b))
    assert fleet.vms["other"]["uuid"] in [v["uuid"] for v in on_b]
    assert not {v["uuid"] for v in on_b} & {fleet.vms[r]["uuid"] for r in ("good", "paused")}
    paused = _items(fleet.get("/api/v1/vms", state="paused"))
    assert [v["uuid"] for v in paused] == [fleet.vms["paused"]["uuid"]]
    [named] = _items(fleet.get("/api/v1/vms", q=fleet.vms["good"]["name"]))
    assert named["uuid"] == fleet.vms["good"]["uuid"]

    bad = fleet.get(f"/api/v1/vms/{fleet.vms['bad']['uuid']}")
    assert [r["request_id"] for r in bad["requests"]] == [fleet.requests["bad"]]
    [fail] = [e for e in bad["events"] if e["phase"] == "fail"]
    hooks = fail["event"]["data"]["hooks"]
    assert hooks[0]["name"] == "50_quota" and hooks[0]["rc"] == 2
    assert HOOK_STDERR in hooks[0]["stderr_tail"] and HOOK_STDOUT in hooks[0]["stdout_tail"]
    with fleet.client() as c:
        assert c.get("/api/v1/vms/00000000-0000-0000-0000-000000000000").status_code == 404


def test_requests_filters_and_one_requests_history(fleet: Fleet):
    rq = fleet.requests
    every = _items(fleet.get("/api/v1/requests", limit=100))
    assert {r["request_id"] for r in every} >= set(rq.values())
    ats = [(r["at"], r["request_id"]) for r in every]
    assert ats == sorted(ats, reverse=True) or [a for a, _ in ats] == sorted(
        [a for a, _ in ats], reverse=True
    )  # newest first
    one = lambda **f: [r["request_id"] for r in _items(fleet.get("/api/v1/requests", **f))]  # noqa: E731
    assert sorted(one(host=fleet.host_b)) == sorted([rq["other_stop"], rq["other"]])
    assert sorted(one(vm=fleet.vms["paused"]["uuid"])) == sorted([rq["paused"], rq["paused_start"]])
    assert set(one(op="pause_vm")) == {rq["paused"]}
    assert one(phase="fail") == [rq["bad"]]
    assert one(error_code="hook_failed") == [rq["bad"]]
    assert one(text="gold-7") == [rq["bad"]]  # in the hook's output
    assert one(text="no such text anywhere") == []
    # a time range (AMQP timestamps are whole seconds: the range is around the whole test)
    first = min(r["at"] for r in every if r["request_id"] in rq.values())
    assert set(one(since=first, limit=100)) >= set(rq.values())
    assert one(until=first) == [] and one(since="2999-01-01T00:00:00Z") == []

    r = fleet.get(f"/api/v1/requests/{rq['bad']}")
    assert r["result"] == "failed" and r["error_code"] == "hook_failed" and r["hook"] == "50_quota"
    assert [m["request_id"] for m in r["messages"]] == [rq["bad"]]
    assert [e["phase"] for e in r["events"] if e["kind"] == "op"] == ["before", "fail"]
    with fleet.client() as c:
        assert c.get("/api/v1/requests/nope").status_code == 404


def test_paging_is_stable_and_covers_everything_once(fleet: Fleet):
    whole = [r["request_id"] for r in _items(fleet.get("/api/v1/requests", limit=500))]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        doc = fleet.get("/api/v1/requests", **params)
        seen += [r["request_id"] for r in doc["items"]]
        cursor = doc["next"]
        if not cursor:
            break
    assert seen == whole and len(set(seen)) == len(seen)
    with fleet.client() as c:
        assert c.get("/api/v1/requests", params={"cursor": "garbage!"}).status_code == 400
        assert c.get("/api/v1/requests", params={"limit": 0}).status_code == 422


def test_events_filters_failures_dead_letters_and_charts(fleet: Fleet):
    rq = fleet.requests
    evs = _items(fleet.get("/api/v1/events", request_id=rq["bad"]))
    assert {e["phase"] for e in evs} >= {"fail"}
    assert all(e["request_id"] == rq["bad"] for e in evs)
    state = _items(fleet.get("/api/v1/events", kind="state", host=fleet.env.host))
    assert [(e["type"], e["vm"]) for e in state] == [
        ("vmworker.state.stopped", fleet.vms["gone"]["uuid"])
    ]
    assert _items(fleet.get("/api/v1/events", type="vmworker.state.stopped")) == state
    texts = _items(fleet.get("/api/v1/events", text=HOOK_STDERR[:20]))
    assert [e["request_id"] for e in texts] == [rq["bad"]]

    [f] = _items(fleet.get("/api/v1/failures"))
    assert f["request_id"] == rq["bad"] and f["hook"] == "50_quota"
    assert HOOK_STDERR in f["stderr"]

    # the failed start was dead-lettered: the ingest reads the dead queue without taking it
    def dead() -> Any:
        rows = fleet.get("/api/v1/dead-letters", host=fleet.env.host)
        return [d for d in rows if d["request_id"] == rq["bad"]]

    [d] = wait_for(dead, 20, "the dead letter in the store")
    assert "50_quota" in (d["reason"] or "")

    per_min = fleet.get("/api/v1/charts/ops-per-minute", minutes=10)
    assert len(per_min) == 10 and sum(p["ops"] for p in per_min) >= 6
    assert sum(p["failed"] for p in per_min) == 1
    rates = {r["host"]: r for r in fleet.get("/api/v1/charts/failure-rate")}
    assert rates[fleet.env.host]["failed"] == 1 and rates[fleet.host_b]["failed"] == 0


def test_openapi_describes_the_api(fleet: Fleet):
    doc = fleet.get("/api/v1/openapi.json")
    paths = set(doc["paths"])
    for p in (
        "/api/v1/summary",
        "/api/v1/hosts",
        "/api/v1/hosts/{host}",
        "/api/v1/vms",
        "/api/v1/vms/{uuid}",
        "/api/v1/requests",
        "/api/v1/requests/{request_id}",
        "/api/v1/events",
        "/api/v1/failures",
        "/api/v1/dead-letters",
        "/api/v1/stream",
        "/api/v1/actions/replay",
        "/api/v1/actions/drain",
    ):
        assert p in paths, p
    params = {p["name"] for p in doc["paths"]["/api/v1/requests"]["get"]["parameters"]}
    assert {"host", "vm", "op", "phase", "error_code", "since", "until", "text", "cursor"} <= params
    with fleet.client() as c:
        assert "swagger" in c.get("/api/v1/docs").text.lower()


def test_live_events_reach_a_stream_filtered_by_vm(fleet: Fleet):
    vm = fleet.vms["good"]["uuid"]
    got: list[dict[str, Any]] = []
    ready = threading.Event()

    def listen() -> None:
        with (
            httpx.Client(base_url=fleet.url, timeout=30) as c,
            c.stream("GET", "/api/v1/stream", params={"vm": vm}) as r,
        ):
            event = None
            for line in r.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "hello":
                    ready.set()
                elif line.startswith("data:") and event == "stored":
                    got.append(json.loads(line.split(":", 1)[1]))
                    if any(e.get("phase") == "after" for e in got):
                        return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert ready.wait(10)
    other = fleet.env.publish("pause_vm", {"uuid": fleet.vms["paused"]["uuid"]})  # not this VM
    rid = fleet.env.publish("pause_vm", {"uuid": vm})
    t.join(20)
    assert not t.is_alive(), got
    assert got and all(e["vm"] == vm for e in got)
    assert rid in {e["request_id"] for e in got} and other not in {e["request_id"] for e in got}
    fleet.tap.wait_terminal(other)
    resume = fleet.env.publish("resume_vm", {"uuid": vm})
    fleet.tap.wait_terminal(resume)


def test_actions_need_the_token_and_every_attempt_is_audited(fleet: Fleet):
    body = {"request_id": fleet.requests["bad"], "dry_run": True}
    before = len(_audit(fleet))
    with fleet.client() as c:
        r = c.post("/api/v1/actions/replay", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    with fleet.client("wrong-token") as c:
        assert c.post("/api/v1/actions/replay", json=body).status_code == 401
    rows = _audit(fleet)[before:]
    assert [(r["action"], r["result"]["status"]) for r in rows] == [("replay", 401)] * 2
    assert all(r["who"].startswith("client 127.0.0.1") for r in rows)


def test_no_token_configured_disables_actions(tmp_path: Path):
    from fastapi.testclient import TestClient

    from worker.config import Settings
    from worker.fleet.app import create_app
    from worker.fleet.store import open_store

    engine = open_store(f"sqlite:///{tmp_path / 'f.db'}")
    app = create_app(engine, Settings(fleet={"token": None}))
    with TestClient(app) as c:
        for path, body in (
            ("/api/v1/actions/replay", {"request_id": "x"}),
            ("/api/v1/actions/drain", {"host": "a", "to": ["b"]}),
        ):
            r = c.post(path, json=body, headers={"Authorization": "Bearer anything"})
            assert r.status_code == 403 and "no fleet.token" in r.json()["detail"]
        assert "Actions are disabled" in c.get("/failures").text
    engine.dispose()


def test_replay_dry_run_sends_nothing_and_the_real_one_runs_again(fleet: Fleet):
    rq = fleet.requests
    with broker_conn() as conn:
        logged = len(_ops_log(conn, fleet))
    with fleet.client(TOKEN) as c:
        r = c.post("/api/v1/actions/replay", json={"request_id": rq["bad"], "dry_run": True})
        assert r.status_code == 200, r.text
        [row] = r.json()["replays"]
        assert row["request_id"] == rq["bad"] and row["as_new"] and not row["sent"]
        assert r.json()["dry_run"] is True
    with broker_conn() as conn:
        assert len(_ops_log(conn, fleet)) == logged  # nothing was published

    fleet.hook.unlink()  # the cause is fixed: the replay runs and succeeds
    with fleet.client(TOKEN) as c:
        r = c.post("/api/v1/actions/replay", json={"request_id": rq["bad"], "dry_run": False})
        assert r.status_code == 200, r.text
    [row] = r.json()["replays"]
    assert row["sent"] and row["new_request_id"] != rq["bad"]
    ev = fleet.tap.wait_terminal(row["new_request_id"])
    assert ev["data"]["phase"] == "after" and ev["data"]["replay_of"] == rq["bad"]
    stored = fleet.wait_stored(row["new_request_id"], "ok")
    assert stored["replay_of"] == rq["bad"]
    orig = fleet.get(f"/api/v1/requests/{rq['bad']}")
    assert [x["request_id"] for x in orig["replays"]] == [row["new_request_id"]]

    audit = [a for a in _audit(fleet) if a["action"] == "replay" and a["who"].startswith("test-")]
    assert [(a["dry_run"], a["target"], a["result"]["ok"]) for a in audit[-2:]] == [
        (True, rq["bad"], True),
        (False, rq["bad"], True),
    ]
    assert audit[-1]["result"]["ids"] == [row["new_request_id"]]
    assert audit[-1]["who"] == "test-operator (127.0.0.1)"


def test_replay_from_the_dead_letter_queue_dry_run_keeps_it_there(fleet: Fleet):
    rq = fleet.requests
    dead_q = fleet.env.topology.dead_queue.name
    with broker_conn() as conn:
        wait_depth(conn, dead_q, 1)
    body = {"request_id": rq["bad"], "source": "dead", "host": fleet.env.host, "dry_run": True}
    with fleet.client(TOKEN) as c:
        r = c.post("/api/v1/actions/replay", json=body)
    assert r.status_code == 200, r.text
    [row] = r.json()["replays"]
    assert row["source"] == f"dead:{fleet.env.host}" and not row["sent"]
    assert "50_quota" in row["dead_reason"]
    with broker_conn() as conn:
        wait_depth(conn, dead_q, 1)  # requeued
    with fleet.client(TOKEN) as c:
        r = c.post("/api/v1/actions/replay", json={**body, "host": None})
        assert r.status_code == 400
        r = c.post("/api/v1/actions/replay", json={**body, "request_id": "not-there"})
        assert r.status_code == 404


def test_drain_dry_run_plans_the_running_vms(fleet: Fleet):
    body = {"host": fleet.env.host, "to": [fleet.host_b], "dry_run": True}
    with fleet.client(TOKEN) as c:
        r = c.post("/api/v1/actions/drain", json=body)
    assert r.status_code == 200, r.text
    plan = r.json()
    assert plan["dry_run"] is True and plan["correlation_id"] is None
    moved = {m["vm"] for m in plan["moves"]}
    assert fleet.vms["good"]["uuid"] in moved
    assert all(m["destination"] == fleet.host_b for m in plan["moves"])
    audit = [a for a in _audit(fleet) if a["action"] == "drain"]
    assert audit[-1]["target"] == fleet.env.host and audit[-1]["dry_run"] is True


def _ops_log(conn: Any, fleet: Fleet) -> list[Any]:
    from tests.support import read_stream

    return read_stream(conn, f"{fleet.env.prefix}.ops.log", timeout=1.0)


def test_monitor_and_history_answer_from_the_fleet_server(fleet: Fleet):
    from click.testing import CliRunner

    from worker.cli import main

    run = lambda *args: CliRunner().invoke(main, [*args, "--fleet-url", fleet.url])  # noqa: E731
    res = run("monitor", "--once", "--width", "240")
    assert res.exit_code == 0, res.output
    screen = res.output
    assert fleet.env.host in screen and fleet.host_b in screen
    paused = next(line for line in screen.splitlines() if fleet.vms["paused"]["name"] in line)
    assert "paused" in paused and "pause_vm" in paused and "ok" in paused
    assert HOOK_STDERR in screen and "50_quota" in screen  # the failure, with its stderr

    rid = fleet.requests["paused"]
    res = run("history", "--request-id", rid, "--json")
    assert res.exit_code == 0, res.output
    from_fleet = json.loads(res.output)
    # the same timeline as the streams give
    res = CliRunner().invoke(
        main,
        ["history", "--request-id", rid, "--json", "--broker", fleet.settings.broker,
         "--prefix", fleet.env.prefix, "--idle", "0.5"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    from_streams = json.loads(res.output)
    shape = lambda es: [(e["kind"], e["what"], e["request_id"], e["time"]) for e in es]  # noqa: E731
    assert shape(from_fleet) == shape(from_streams)
    assert [e["what"] for e in from_fleet] == ["published", "pause_vm.before", "pause_vm.after"]

    res = run("history", "--vm", fleet.vms["bad"]["uuid"])
    assert res.exit_code == 0, res.output
    assert "published" in res.output and "hook_failed" in res.output and HOOK_STDERR in res.output
    res = run("history", "--request-id", "no-such-request")
    assert res.exit_code != 0 and "nothing found" in res.output
    res = CliRunner().invoke(main, ["history", "--vm", "x", "--fleet-url", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "fleet server http://127.0.0.1:9" in res.output


def test_fleet_serve_binds_the_loopback_by_default_and_follows_the_streams(
    fleet: Fleet, tmp_path: Path
):
    import os
    import re
    import signal
    import subprocess
    import sys

    from tests.fleetweb import free_port

    port = free_port()
    env = {
        **os.environ,
        "VMWORKER_BROKER": fleet.settings.broker,
        "VMWORKER_PREFIX": fleet.env.prefix,
        "VMWORKER_FLEET__PORT": str(port),
    }
    env.pop("VMWORKER_CONFIG", None)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "fleet", "serve", "--state-dir", str(tmp_path)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        said = wait_for(
            lambda: re.search(r'"url": "(http://[^"]+)"', log.read_text()), 30, "serving"
        )
        assert said.group(1) == f"http://127.0.0.1:{port}/"
        assert '"actions_disabled"' in log.read_text() or "actions_disabled" in log.read_text()

        def both_hosts() -> Any:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/v1/summary", timeout=5)
            except httpx.HTTPError:
                return None
            return r.status_code == 200 and r.json()["hosts"]["total"] == 2

        wait_for(both_hosts, 30, "the served store to have both hosts")
        assert (tmp_path / "fleet.db").exists()  # SQLite under the state dir: the default
        listening = subprocess.run(
            ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout
        [local] = [line.split()[3] for line in listening.splitlines()]
        assert local == f"127.0.0.1:{port}", listening
    finally:
        proc.send_signal(signal.SIGTERM)
        # a clean stop: uvicorn shuts down, then re-raises the signal (systemd's "success")
        assert proc.wait(30) in (0, -signal.SIGTERM), log.read_text()[-2000:]
        assert "Traceback" not in log.read_text()
