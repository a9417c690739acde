"""The fleet store: events and ops log messages folded in through the ingest's own code path
(`apply_batch`), then every query and filter, paging, and host status over time.

These run on SQLite in a temporary directory; tests/integration/test_fleet_store_postgres.py
runs the same tests on a real PostgreSQL server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests import fleetdata as fd
from worker.fleet import queries as q
from worker.fleet import store as st
from worker.fleet.fold import StreamEvent, apply_batch
from worker.fleet.ingest import Ingest
from worker.monitor import DOWN_FACTOR, LATE_FACTOR
from worker.topology import Topology

T0 = 1_790_000_000.0  # a fixed "now" the made-up events are placed around


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = st.open_store(st.default_url(tmp_path / "state"))
    yield e
    e.dispose()


def feed(engine: Engine, *items: Any) -> list[dict[str, Any]]:
    with engine.begin() as conn:
        return apply_batch(conn, list(items))


def count(engine: Engine, table: sa.Table) -> int:
    with engine.connect() as c:
        return int(c.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def rid() -> str:
    return str(uuid.uuid4())


# -- the store itself -----------------------------------------------------------------------
def test_open_store_makes_the_sqlite_file_in_wal_mode_and_is_idempotent(tmp_path):
    url = st.default_url(tmp_path / "a" / "b")
    e = st.open_store(url)
    with e.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        names = set(sa.inspect(c).get_table_names())
    e.dispose()
    assert {
        "hosts",
        "vms",
        "requests",
        "events",
        "ops_messages",
        "dead_letters",
        "heartbeats",
        "offsets",
        "audit",
    } <= names
    assert (tmp_path / "a" / "b" / "fleet.db").exists()
    st.open_store(url).dispose()  # a second open finds the tables there


def test_offsets_and_audit_rows(engine):
    with engine.begin() as c:
        assert st.get_offset(c, "vm.events.log") is None
        st.set_offset(c, "vm.events.log", 41)
        st.set_offset(c, "vm.events.log", 42)
        a = st.record_audit(
            c, who="alice", action="replay", target="r1", params={"dry_run": True}, dry_run=True
        )
        b = st.record_audit(c, who="bob", action="drain", target="h1", result={"moved": 3})
    with engine.connect() as c:
        assert st.get_offset(c, "vm.events.log") == 42
        rows = c.execute(sa.select(st.audit).order_by(st.audit.c.id)).mappings().all()
    assert [r["id"] for r in rows] == [a, b]
    assert rows[0]["who"] == "alice" and rows[0]["dry_run"] is True
    assert rows[0]["params"] == {"dry_run": True}
    assert rows[1]["result"] == {"moved": 3} and rows[1]["dry_run"] is False


# -- an operation's life --------------------------------------------------------------------
def test_a_request_published_started_and_finished_is_one_row_with_every_phase(engine):
    vm, r = str(uuid.uuid4()), rid()
    feed(engine, fd.message("h1", "start_vm", T0, vm, r))
    with engine.connect() as c:
        [row] = q.list_requests(c)["items"]
    assert (row["phase"], row["result"], row["host"], row["op"]) == (
        "published",
        "queued",
        "h1",
        "start_vm",
    )
    live = feed(
        engine,
        fd.op("h1", "start_vm", "before", T0 + 0.2, vm, r),
        fd.op("h1", "start_vm", "after", T0 + 0.7, vm, r, state="running"),
    )
    assert [(x["type"], x["phase"], x["request_id"]) for x in live] == [
        ("vmworker.start_vm.before", "before", r),
        ("vmworker.start_vm.after", "after", r),
    ]
    assert all(isinstance(x["id"], int) for x in live)
    with engine.connect() as c:
        [row] = q.list_requests(c)["items"]
        got = q.get_request(c, r)
        vmrow = q.list_vms(c, now=T0 + 1)["items"][0]
        series = q.ops_per_minute(c, now=T0 + 1, minutes=2)
    assert row["phase"] == "after" and row["result"] == "ok" and row["state"] == "running"
    assert row["published_at"] == q.iso(float(int(T0)))
    assert row["started_at"] == q.iso(T0 + 0.2) and row["finished_at"] == q.iso(T0 + 0.7)
    assert [e["phase"] for e in got["events"]] == ["before", "after"]
    assert [m["op"] for m in got["messages"]] == ["start_vm"]
    assert (vmrow["state"], vmrow["last_op"], vmrow["result"]) == ("running", "start_vm", "ok")
    assert sum(p["ops"] for p in series) == 1 and sum(p["failed"] for p in series) == 0


def test_an_outcome_older_than_the_one_stored_does_not_replace_it(engine):
    vm, r = str(uuid.uuid4()), rid()
    feed(engine, fd.op("h1", "stop_vm", "fail", T0 + 5, vm, r, state="running"))
    feed(engine, fd.op("h1", "stop_vm", "before", T0, vm, r))  # seen late: changes no outcome
    with engine.connect() as c:
        row = q.get_request(c, r)
        vmrow = q.list_vms(c, now=T0)["items"][0]
    assert row["phase"] == "fail" and row["result"] == "failed"
    assert row["started_at"] == q.iso(T0) and row["at"] == q.iso(T0)
    assert vmrow["result"] == "failed"


def test_a_failure_with_hook_output_is_found_by_text_code_and_in_failures(engine):
    vm, r, ok = str(uuid.uuid4()), rid(), rid()
    err = {
        "code": "hook_failed",
        "source": "hook",
        "message": "50_gate failed (rc=2)",
        "hook": "50_gate",
        "stderr": "storage gateway refused: pool locked",
    }
    hooks = [{"name": "50_gate", "point": "before_vm_start", "rc": 2, "stderr_tail": "pool locked"}]
    feed(
        engine,
        fd.op("h1", "start_vm", "before", T0, vm, r),
        fd.op("h1", "start_vm", "fail", T0 + 1, vm, r, state="shutoff", error=err, hooks=hooks),
        fd.op(
            "h1",
            "start_vm",
            "after",
            T0 + 2,
            vm,
            ok,
            hooks=[{"name": "60_log", "rc": 0, "stdout_tail": "all green here"}],
        ),
    )
    with engine.connect() as c:
        by_text = q.list_requests(c, text="GATEWAY refused")["items"]
        by_stdout = q.list_requests(c, text="all green")["items"]
        by_code = q.list_requests(c, error_code="hook_failed")["items"]
        ev_text = q.list_events(c, text="pool locked")["items"]
        fails = q.failures(c, since=T0 - 1)["items"]
        none_since = q.failures(c, since=T0 + 1.5)["items"]
        pct = q.list_requests(c, text="100%")["items"]  # a LIKE wildcard is taken literally
        vmrow = q.get_vm(c, vm)
    assert [x["request_id"] for x in by_text] == [r]
    assert [x["request_id"] for x in by_stdout] == [ok]
    assert [x["request_id"] for x in by_code] == [r]
    assert by_code[0]["hook"] == "50_gate" and by_code[0]["error_source"] == "hook"
    assert [x["phase"] for x in ev_text] == ["fail"]
    [f] = fails
    assert f["request_id"] == r and f["hook"] == "50_gate"
    assert f["stderr"] == "storage gateway refused: pool locked"
    assert none_since == [] and pct == []
    assert vmrow is not None and vmrow["result"] == "ok" and vmrow["state"] == "running"
    assert [e["event"]["data"]["hooks"][0]["name"] for e in vmrow["events"][1:]] == [
        "50_gate",
        "60_log",
    ]


def test_a_duplicate_outcome_counts_once_and_changes_no_state(engine):
    vm, r = str(uuid.uuid4()), rid()
    feed(
        engine,
        fd.op("h1", "start_vm", "before", T0, vm, r),
        fd.op("h1", "start_vm", "fail", T0 + 1, vm, r, state="shutoff"),
        fd.state("h1", T0 + 2, vm, "started", "running"),
    )
    feed(engine, fd.op("h1", "start_vm", "fail", T0 + 3, vm, r, state="shutoff", duplicate=True))
    with engine.connect() as c:
        row = q.get_request(c, r)
        fails = q.failures(c)["items"]
        vmrow = q.list_vms(c, now=T0)["items"][0]
        series = q.ops_per_minute(c, now=T0 + 3, minutes=1)
        summary = q.fleet_summary(c, T0 + 3)
    assert row is not None and row["duplicates"] == 1 and row["finished_at"] == q.iso(T0 + 1)
    assert [e["duplicate"] for e in row["events"]] == [False, False, True]
    assert len(fails) == 1
    assert vmrow["state"] == "running" and vmrow["result"] == "duplicate"
    assert series[-1]["ops"] == 1 and series[-1]["failed"] == 1
    assert summary["failures_last_hour"] == 1


def test_a_replay_shows_in_the_original_requests_history(engine):
    vm, r, again = str(uuid.uuid4()), rid(), rid()
    feed(
        engine,
        fd.message("h1", "start_vm", T0, vm, r),
        fd.op("h1", "start_vm", "fail", T0 + 1, vm, r),
        fd.message("h1", "start_vm", T0 + 60, vm, again, replay_of=r),
        fd.op("h1", "start_vm", "before", T0 + 61, vm, again, replay_of=r),
        fd.op("h1", "start_vm", "after", T0 + 62, vm, again, replay_of=r),
    )
    with engine.connect() as c:
        got = q.get_request(c, r)
        replayed = q.get_request(c, again)
        by_replay = q.list_requests(c, replay_of=r)["items"]
    assert got is not None and replayed is not None
    assert [x["request_id"] for x in got["replays"]] == [again]
    assert got["replays"][0]["result"] == "ok"
    assert [(m["request_id"], m["replay_of"]) for m in got["messages"]] == [(r, None), (again, r)]
    assert [(e["request_id"], e["phase"]) for e in got["events"]] == [
        (r, "fail"),
        (again, "before"),
        (again, "after"),
    ]
    assert replayed["replay_of"] == r
    assert [x["request_id"] for x in by_replay] == [again]


def test_state_events_move_the_vm_and_show_in_the_request_they_happened_during(engine):
    vm, r = str(uuid.uuid4()), rid()
    feed(
        engine,
        fd.op("h1", "start_vm", "before", T0, vm, r),
        fd.state("h1", T0 + 0.5, vm, "started", "running", during_request=r),
        fd.op("h1", "start_vm", "after", T0 + 1, vm, r),
        fd.state("h1", T0 + 10, vm, "stopped", "shutoff", reason="destroyed"),
    )
    with engine.connect() as c:
        got = q.get_request(c, r)
        vmrow = q.get_vm(c, vm)
        states = q.list_events(c, kind="state")["items"]
        stopped = q.list_events(c, phase="stopped")["items"]
        shut = q.list_vms(c, state="shutoff", now=T0 + 10)["items"]
    assert got is not None
    assert [e["type"] for e in got["events"]] == [
        "vmworker.start_vm.before",
        "vmworker.state.started",
        "vmworker.start_vm.after",
    ]
    assert vmrow is not None
    assert vmrow["state"] == "shutoff" and vmrow["last_change"] == "stopped (destroyed)"
    assert vmrow["changed_at"] == q.iso(T0 + 10)
    assert [e["type"] for e in vmrow["events"]][-1] == "vmworker.state.stopped"
    assert len(states) == 2 and [e["phase"] for e in stopped] == ["stopped"]
    assert [v["uuid"] for v in shut] == [vm]


def test_a_migrated_vm_moves_to_its_destination_and_a_failed_one_stays(engine):
    vm, r, r2 = str(uuid.uuid4()), rid(), rid()
    feed(engine, fd.online("src", T0, [fd.domain(vm, "web")]), fd.online("dst", T0, []))

    def migration(rid_: str, t: float, ok: bool) -> list[Any]:
        dst = {"source": "src", "migration_request": rid_, "correlation_id": rid_}
        end = "after" if ok else "fail"
        mig = {"destination": "dst"}
        return [
            fd.op("src", "migrate_vm", "before", t, vm, rid_, **mig),
            fd.op("dst", "prepare_incoming", "after", t + 1, vm, f"{rid_}.prepare", **dst),
            fd.op(
                "src",
                "migrate_vm",
                end,
                t + 2,
                vm,
                rid_,
                state="undefined" if ok else "running",
                destination_state="running",
                **mig,
            ),
            fd.op("dst", "finish_incoming", end, t + 3, vm, f"{rid_}.finish", **dst),
        ]

    feed(engine, *migration(r, T0 + 10, ok=False))
    with engine.connect() as c:
        v = q.get_vm(c, vm, now=T0 + 15)
    assert v is not None and (v["host"], v["state"], v["result"]) == ("src", "running", "failed")
    feed(engine, *migration(r2, T0 + 20, ok=True))
    with engine.connect() as c:
        v = q.get_vm(c, vm, now=T0 + 25)
        req = q.get_request(c, r2)
    assert v is not None and (v["host"], v["state"], v["last_op"]) == (
        "dst",
        "running",
        "finish_incoming",
    )
    assert req is not None and req["destination"] == "dst" and req["result"] == "ok"


def test_a_set_ticket_password_is_never_shown(engine):
    vm, r = str(uuid.uuid4()), rid()
    secret = "hunter2-very-secret"
    feed(
        engine,
        fd.message("h1", "set_ticket", T0, vm, r, params={"password": secret, "graphics": ["vnc"]}),
    )
    with engine.connect() as c:
        got = q.get_request(c, r)
    assert got is not None
    assert got["messages"][0]["body"]["params"]["password"] == "***"
    assert secret not in repr(got)


def test_a_forged_event_and_foreign_messages_are_not_stored(engine):
    vm, r = str(uuid.uuid4()), rid()
    forged = fd.op("h2", "start_vm", "after", T0, vm, r)
    feed(
        engine,
        StreamEvent(1, "h1.start_vm.after", forged),  # h1 published an event claiming h2
        {"type": "something.else", "data": {}},
        {"type": "vmworker.start_vm.after", "data": "not an object"},
    )
    assert count(engine, st.events) == 0 and count(engine, st.requests) == 0


# -- hosts ----------------------------------------------------------------------------------
def test_heartbeats_keep_the_host_row_current_and_a_bounded_history_but_no_event_rows(engine):
    beats = [
        fd.heartbeat("h1", T0 + 30 * i, queue_depth=i) for i in range(st.HEARTBEAT_HISTORY + 5)
    ]
    feed(engine, fd.online("h1", T0 - 1), *beats[:50])
    feed(engine, *beats[50:])
    assert count(engine, st.events) == 1  # the online event only
    assert count(engine, st.heartbeats) == st.HEARTBEAT_HISTORY
    now = T0 + 30 * (st.HEARTBEAT_HISTORY + 4) + 1
    with engine.connect() as c:
        host = q.get_host(c, "h1", now=now)
    assert host is not None
    assert host["status"] == "up" and host["queue_depth"] == st.HEARTBEAT_HISTORY + 4
    seqs = [b["seq"] for b in host["heartbeats"]]
    assert seqs == sorted(seqs) and seqs[-1] == st.HEARTBEAT_HISTORY + 6  # online + beats
    assert host["heartbeats"][-1]["queue_depth"] == st.HEARTBEAT_HISTORY + 4
    assert host["hooks"] == {}  # the last heartbeat's (old shape: it carries them)


def test_the_depths_the_broker_gave_survive_the_next_heartbeats(engine):
    feed(engine, fd.online("h1", T0))
    with engine.begin() as c:
        c.execute(st.hosts.update().values(broker_depth=12, dead_depth=3, depth_at=T0 + 1))
    feed(engine, fd.heartbeat("h1", T0 + 30, queue_depth=4))
    with engine.connect() as c:
        host = q.get_host(c, "h1", now=T0 + 31)
    assert host is not None and host["queue_depth_heartbeat"] == 4
    assert (host["queue_depth"], host["queue_depth_broker"], host["dead_letters"]) == (12, 12, 3)


def test_an_old_heartbeat_seen_late_changes_nothing(engine):
    feed(engine, fd.heartbeat("h1", T0 + 30, queue_depth=7), fd.heartbeat("h1", T0, queue_depth=1))
    with engine.connect() as c:
        host = q.get_host(c, "h1", now=T0 + 31)
    assert host is not None and host["queue_depth"] == 7 and host["last_seen"] == q.iso(T0 + 30)


def test_the_domain_list_of_an_old_heartbeat_makes_vms_and_forgets_those_gone(engine):
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    feed(engine, fd.online("h1", T0, [fd.domain(a, "a"), fd.domain(b, "b", "shutoff")]))
    feed(engine, fd.heartbeat("h1", T0 + 30, domains=[fd.domain(a, "a", "paused")]))
    with engine.connect() as c:
        vms = {v["uuid"]: v for v in q.list_vms(c, host="h1", now=T0 + 31)["items"]}
        host = q.get_host(c, "h1", now=T0 + 31)
    assert vms[a]["state"] == "paused" and vms[b]["state"] == "undefined"
    assert host is not None and host["vms_total"] == 1 and host["vms_by_state"] == {"paused": 1}
    # a list cut to fit its event: a VM missing from it is not taken as gone
    feed(engine, fd.heartbeat("h1", T0 + 60, domains=[], cut=["data.domains"]))
    with engine.connect() as c:
        assert q.list_vms(c, state="paused", now=T0 + 61)["items"][0]["uuid"] == a


def test_the_slim_heartbeat_and_the_inventory_event(engine):
    a = str(uuid.uuid4())
    feed(engine, fd.inventory("h1", T0, [fd.domain(a, "db", "running")], reason="online"))
    feed(
        engine,
        fd.heartbeat(
            "h1",
            T0 + 30,
            slim=True,
            vms={"total": 1, "by_state": {"running": 1}},
            memory={"total_mib": 4096, "free_mib": 1024},
            inventory_digest="d2",
            operations_in_flight=2,
            extra_key_from_a_hook="x",
        ),
    )
    with engine.connect() as c:
        host = q.get_host(c, "h1", now=T0 + 31)
        inv = q.list_events(c, type="vmworker.host.inventory")["items"]
    assert host is not None
    assert host["status"] == "up" and host["inventory_digest"] == "d2"
    assert host["vms_total"] == 1 and host["vms_by_state"] == {"running": 1}
    assert host["memory"] == {"total_mib": 4096, "free_mib": 1024}
    assert host["hooks"] == {"before_vm_start": []} and host["inventory_at"] == q.iso(T0)
    assert host["operations_in_flight"] == 2 and host["extra"] == {"extra_key_from_a_hook": "x"}
    assert [v["name"] for v in host["vms"]] == ["db"]
    assert len(inv) == 1 and host["heartbeats"][-1]["memory"]["free_mib"] == 1024


def test_host_status_up_late_down_and_offline(engine):
    feed(engine, fd.online("h1", T0), fd.online("h2", T0), fd.online("h3", T0))
    vm = str(uuid.uuid4())
    feed(engine, fd.heartbeat("h2", T0 + 1, domains=[fd.domain(vm, "x")]), fd.offline("h3", T0 + 2))
    feed(engine, fd.op("h4", "start_vm", "before", T0, str(uuid.uuid4()), rid()))  # never beat

    def statuses(now: float) -> dict[str, str]:
        with engine.connect() as c:
            return {h["host"]: h["status"] for h in q.list_hosts(c, now=now)["items"]}

    assert statuses(T0 + 10) == {"h1": "up", "h2": "up", "h3": "offline", "h4": "unknown"}
    late = T0 + LATE_FACTOR * 30 + 0.5
    assert statuses(late) == {"h1": "late", "h2": "up", "h3": "offline", "h4": "unknown"}
    down = T0 + DOWN_FACTOR * 30 + 2
    assert statuses(down)["h1"] == "down" and statuses(down)["h2"] == "down"
    with engine.connect() as c:
        assert [h["host"] for h in q.list_hosts(c, status="late", now=late)["items"]] == ["h1"]
        assert [h["host"] for h in q.list_hosts(c, status="down", now=down)["items"]] == [
            "h1",
            "h2",
        ]
        summary = q.fleet_summary(c, down)
        vms = q.list_vms(c, now=down)["items"]
        kept = q.list_hosts(c, now=T0 + 3600, offline_after=600)["items"]
    assert summary["hosts"] == {
        "up": 0,
        "late": 0,
        "down": 2,
        "offline": 1,
        "unknown": 1,
        "total": 4,
    }
    assert summary["vms"].get("unknown") == 2  # h2's VM: its host is down; h4's: never told
    v = next(x for x in vms if x["uuid"] == vm)
    assert v["state"] == "unknown" and v["state_reported"] == "running"
    assert [h["host"] for h in kept] == ["h4"]  # down and offline for an hour are left out
    # the host comes back: up again
    feed(engine, fd.heartbeat("h1", T0 + 3600))
    assert statuses(T0 + 3601)["h1"] == "up"


def test_list_hosts_by_name_part(engine):
    feed(engine, *(fd.online(f"rack{i}-node", T0) for i in range(5)), fd.online("other", T0))
    with engine.connect() as c:
        got = q.list_hosts(c, q="RACK3", now=T0)["items"]
    assert [h["host"] for h in got] == ["rack3-node"]


# -- filters and paging ---------------------------------------------------------------------
def _fleet(engine: Engine) -> dict[str, Any]:
    """Three hosts, two VMs each, operations of three kinds; some fail."""
    out: dict[str, Any] = {"requests": [], "vms": {}}
    items: list[Any] = []
    t = T0
    for h in ("ha", "hb", "hc"):
        items.append(fd.online(h, T0 - 100))
        for n in range(2):
            vm = str(uuid.uuid4())
            out["vms"][vm] = h
            for k, opname in enumerate(("start_vm", "pause_vm", "stop_vm")):
                r = rid()
                t += 1
                fail = (n + k) % 3 == 0
                items.append(fd.op(h, opname, "before", t, vm, r, name=f"{h}-vm{n}"))
                err = {"code": f"code_{opname}", "source": "libvirt", "message": f"{opname} no"}
                phase = "fail" if fail else "after"
                items.append(fd.op(h, opname, phase, t + 0.5, vm, r, name=f"{h}-vm{n}", error=err))
                out["requests"].append((r, h, vm, opname, phase, t))
    feed(engine, *items)
    return out


def test_every_filter_of_requests_and_events(engine):
    f = _fleet(engine)
    reqs = f["requests"]

    def ids(items: list[dict[str, Any]]) -> set[str]:
        return {x["request_id"] for x in items}

    with engine.connect() as c:
        assert ids(q.list_requests(c, host="hb", limit=100)["items"]) == {
            r for r, h, *_ in reqs if h == "hb"
        }
        vm = next(iter(f["vms"]))
        assert ids(q.list_requests(c, vm=vm, limit=100)["items"]) == {
            r for r, _, v, *_ in reqs if v == vm
        }
        assert ids(q.list_requests(c, op="pause_vm", limit=100)["items"]) == {
            r for r, _, _, o, *_ in reqs if o == "pause_vm"
        }
        assert ids(q.list_requests(c, phase="fail", limit=100)["items"]) == {
            r for r, *_, p, _ in reqs if p == "fail"
        }
        assert ids(q.list_requests(c, error_code="code_stop_vm", limit=100)["items"]) == {
            r for r, _, _, o, p, _ in reqs if o == "stop_vm" and p == "fail"
        }
        since, until = T0 + 5, T0 + 9
        assert ids(q.list_requests(c, since=since, until=until, limit=100)["items"]) == {
            r for r, *_, t in reqs if since <= t < until
        }
        assert ids(
            q.list_requests(c, host="hc", phase="after", op="start_vm", limit=100)["items"]
        ) == {r for r, h, _, o, p, _ in reqs if (h, o, p) == ("hc", "start_vm", "after")}
        ev = q.list_events(c, host="ha", phase="before", limit=100)["items"]
        assert {e["request_id"] for e in ev} == {r for r, h, *_ in reqs if h == "ha"}
        ev = q.list_events(c, vm=vm, op="stop_vm", limit=100)["items"]
        assert len(ev) == 2 and {e["op"] for e in ev} == {"stop_vm"}
        ev = q.list_events(c, error_code="code_start_vm", since=T0, until=T0 + 100)["items"]
        assert all(e["phase"] == "fail" for e in ev) and ev
        ev = q.list_events(c, request_id=reqs[0][0])["items"]
        assert [e["phase"] for e in ev] == [reqs[0][4], "before"]  # newest first
        vms = q.list_vms(c, host="hb", now=T0 + 50)["items"]
        assert {v["uuid"] for v in vms} == {v for v, h in f["vms"].items() if h == "hb"}
        assert [v["name"] for v in q.list_vms(c, q="HC-VM1", now=T0)["items"]] == ["hc-vm1"]
        failed = {v for v, h in f["vms"].items() if h == "ha"}  # (n + 2) % 3: vm0 ok, vm1 fails
        got = q.list_vms(c, result="failed", now=T0)["items"]
        assert {v["name"] for v in got} == {"ha-vm1", "hb-vm1", "hc-vm1"} and failed


def _walk(page: Any, limit: int) -> list[dict[str, Any]]:
    out, cursor = [], None
    while True:
        got = page(limit=limit, cursor=cursor)
        assert len(got["items"]) <= limit
        out += got["items"]
        cursor = got["next"]
        if cursor is None:
            return out


def test_paging_walks_every_row_once_in_a_stable_order_even_while_rows_arrive(engine):
    vm = str(uuid.uuid4())
    # ten requests at the very same time: the id breaks the tie
    feed(engine, *(fd.op("h1", "start_vm", "after", T0, vm, rid()) for _ in range(10)))
    feed(engine, *(fd.op("h1", "stop_vm", "after", T0 + i, vm, rid()) for i in range(13)))
    with engine.connect() as c:
        everything = q.list_requests(c, limit=1000)["items"]
        paged = _walk(lambda **kw: q.list_requests(c, **kw), 4)
        ev_all = q.list_events(c, limit=1000)["items"]
        ev_paged = _walk(lambda **kw: q.list_events(c, **kw), 7)
    assert len(everything) == 23 and paged == everything
    assert len({x["request_id"] for x in paged}) == 23
    assert ev_paged == ev_all and len(ev_all) == 23
    keys = [(x["at"], x["id"]) for x in ev_all]
    assert keys == sorted(keys, reverse=True)
    # newer rows arriving between pages do not shift what the next page holds
    with engine.connect() as c:
        first = q.list_requests(c, limit=5)
    feed(engine, *(fd.op("h1", "pause_vm", "after", T0 + 99, vm, rid()) for _ in range(3)))
    with engine.connect() as c:
        rest = _walk(lambda **kw: q.list_requests(c, **kw) if kw["cursor"] else first, 5)
    assert [x["request_id"] for x in rest] == [x["request_id"] for x in everything]


def test_hosts_and_vms_page_by_name(engine):
    doms = {
        f"h{i:02d}": [fd.domain(str(uuid.uuid4()), f"vm{j}") for j in range(3)] for i in range(9)
    }
    feed(engine, *(fd.online(h, T0, d) for h, d in doms.items()))
    with engine.connect() as c:
        hosts = _walk(lambda **kw: q.list_hosts(c, now=T0, **kw), 4)
        vms = _walk(lambda **kw: q.list_vms(c, now=T0, **kw), 5)
    assert [h["host"] for h in hosts] == sorted(doms)
    assert [(v["host"], v["name"]) for v in vms] == [
        (h, f"vm{j}") for h in sorted(doms) for j in range(3)
    ]


def test_a_cursor_that_was_not_made_here_is_refused(engine):
    with engine.connect() as c, pytest.raises(q.BadCursor):
        q.list_requests(c, cursor="not-a-cursor")
    with engine.connect() as c, pytest.raises(q.BadCursor):
        q.list_hosts(c, cursor=q._encode([1, 2, 3]))


# -- the summary and the charts -------------------------------------------------------------
def test_fleet_summary_ops_per_minute_and_failure_rate(engine):
    vm = str(uuid.uuid4())
    now = T0 + 3600
    items: list[Any] = [fd.online("h1", now - 10), fd.online("h2", now - 10)]
    for i in range(30):  # h1: 30 ops over the last 30 minutes, every third fails
        phase = "fail" if i % 3 == 0 else "after"
        items.append(fd.op("h1", "start_vm", phase, now - 60 * i - 1, vm, rid()))
    items.append(fd.op("h2", "start_vm", "fail", now - 5, vm, rid()))
    items.append(fd.op("h2", "start_vm", "fail", now - 4000, vm, rid()))  # over an hour ago
    feed(engine, *items)
    with engine.connect() as c:
        s = q.fleet_summary(c, now)
        h1 = q.ops_per_minute(c, host="h1", now=now)
        rates = q.failure_rate(c, now=now)
    assert s["hosts"]["up"] == 2 and s["vms"] == {"running": 1} and s["vms_total"] == 1
    assert s["failures_last_hour"] == 11 and s["ops_last_hour"] == 31
    assert len(s["ops_per_minute"]) == 60 and len(h1) == 60
    assert sum(p["ops"] for p in h1) == 30 and sum(p["failed"] for p in h1) == 10
    assert h1[-1]["minute"] == q.iso(int(now // 60) * 60.0)
    assert rates[0] == {"host": "h1", "ops": 30, "failed": 10, "failure_rate": 0.3333}
    assert rates[1] == {"host": "h2", "ops": 1, "failed": 1, "failure_rate": 1.0}
    assert s["hosts_by_failures"] == rates


def test_dead_letters_are_listed_with_their_reason_and_secrets_hidden(engine):
    body = b'{"op": "set_ticket", "vm": {"uuid": "u"}, "params": {"password": "pw-secret"}}'
    with engine.begin() as c:
        c.execute(
            st.dead_letters.insert(),
            [
                {
                    "host": h,
                    "position": i,
                    "message_id": f"{h}-{i}",
                    "op": "set_ticket",
                    "error_code": "no_domain",
                    "reason": "no domain u",
                    "body": body,
                    "seen_at": T0,
                    "headers": {"x-vmworker-error-code": "no_domain"},
                }
                for h in ("h1", "h2")
                for i in range(2)
            ],
        )
    with engine.connect() as c:
        h1 = q.list_dead_letters(c, host="h1")
        every = q.list_dead_letters(c)
    assert [d["request_id"] for d in h1] == ["h1-0", "h1-1"]
    assert len(every) == 4 and h1[0]["reason"] == "no domain u"
    assert h1[0]["body"]["params"]["password"] == "***" and "pw-secret" not in repr(every)


# -- batching is invisible ------------------------------------------------------------------
def test_one_batch_or_one_message_at_a_time_store_the_same(engine, tmp_path):
    other = st.open_store(st.default_url(tmp_path / "other"))
    vm, r = str(uuid.uuid4()), rid()
    items = [
        fd.online("h1", T0, [fd.domain(vm, "web", "shutoff")]),
        fd.message("h1", "start_vm", T0 + 1, vm, r),
        fd.op("h1", "start_vm", "before", T0 + 1.1, vm, r),
        fd.state("h1", T0 + 1.2, vm, "started", "running", during_request=r),
        fd.op("h1", "start_vm", "after", T0 + 1.3, vm, r),
        fd.heartbeat("h1", T0 + 30, domains=[fd.domain(vm, "web", "running")]),
    ]
    feed(engine, *items)
    ingest = Ingest(other, Topology("vm", "x"))
    for it in items:
        with other.begin() as c:
            ingest.apply(c, it)

    def dump(e: Engine) -> Any:
        with e.connect() as c:
            return (
                q.get_request(c, r),
                q.get_vm(c, vm),
                q.get_host(c, "h1", now=T0 + 31),
                q.fleet_summary(c, T0 + 31),
            )

    assert dump(engine) == dump(other)
    other.dispose()
