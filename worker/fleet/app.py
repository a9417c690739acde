"""The fleet server's HTTP side: a JSON API under /api/v1 (OpenAPI at /api/v1/openapi.json, its
page at /api/v1/docs), server-sent events at /api/v1/stream, actions (replay, drain) behind a
bearer token, and the web UI: server-rendered pages (Jinja2) that a little JavaScript keeps live.

Every read answers from the store (worker/fleet/queries.py) on a connection of its own, in
FastAPI's thread pool; live events come from the ingest thread through a `Broadcaster`."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from sse_starlette.sse import EventSourceResponse

from worker.config import Settings
from worker.fleet import actions, queries
from worker.fleet.charts import bar_chart
from worker.fleet.live import Broadcaster

HERE = Path(__file__).resolve().parent
PAGE_MAX = 500  # rows one API page may ask for
SSE_PING_S = 15.0
CHART_HOSTS = 12  # hosts with a chart of their own on the fleet page (most failures first)
ATTENTION_MAX = 25  # down and late hosts listed on the fleet page, each


class ReplayIn(BaseModel):
    request_id: str = Field(description="the request to replay")
    source: str = Field("log", description="log: the ops log; dead: the host's dead-letter queue")
    host: str | None = Field(None, description="with source=dead: whose dead-letter queue")
    as_new: bool = Field(True, description="a new request id (x-replay-of = the original)")
    to_host: str | None = Field(None, description="send to this host instead of the original one")
    dry_run: bool = Field(True, description="say what would be sent; send nothing")


class DrainIn(BaseModel):
    host: str = Field(description="the host to empty")
    to: list[str] = Field(description="destination hosts")
    by_memory: bool = False
    dry_run: bool = True


def epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def db(request: Request) -> Iterator[Any]:
    """A connection to the store for one request."""
    with request.app.state.engine.connect() as conn:
        yield conn


Conn = Annotated[Any, Depends(db)]
Limit = Annotated[int, Query(ge=1, le=PAGE_MAX, description="rows per page")]
Cursor = Annotated[str | None, Query(description="`next` of the previous page")]


def _paging(limit: Limit = 100, cursor: Cursor = None) -> queries.Paging:
    return {"limit": limit, "cursor": cursor}


Paging = Annotated[queries.Paging, Depends(_paging)]


def _filters(
    paging: Paging,
    host: str | None = None,
    vm: Annotated[str | None, Query(description="VM uuid")] = None,
    op: str | None = None,
    phase: Annotated[str | None, Query(description="before, after, fail, ...")] = None,
    error_code: str | None = None,
    since: Annotated[datetime | None, Query(description="ISO 8601")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601")] = None,
    text: Annotated[str | None, Query(description="text in errors and hook output")] = None,
) -> queries.Filters:
    return {
        "host": host,
        "vm": vm,
        "op": op,
        "phase": phase,
        "error_code": error_code,
        "since": epoch(since),
        "until": epoch(until),
        "text": text,
        **paging,
    }


Filters = Annotated[queries.Filters, Depends(_filters)]


def operator(request: Request) -> str:
    """Who may act: the bearer token of the configuration; else 403 (no token configured)
    or 401 (a wrong or missing one), and the refusal is audited."""
    settings: Settings = request.app.state.settings
    token = settings.fleet.token
    client = request.client.host if request.client else "unknown"
    if not token:
        raise HTTPException(403, "actions are disabled: no fleet.token is configured")
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip(), token):
        request.app.state.audit(
            f"client {client}", request.url.path.rsplit("/", 1)[-1], None, {},
            {"error": "bad or missing token", "status": 401},
        )  # fmt: skip
        raise HTTPException(401, "a bearer token is needed", headers={"WWW-Authenticate": "Bearer"})
    return f"{settings.fleet.token_name} ({client})"


Who = Annotated[str, Depends(operator)]


def _iso(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value).replace("T", " ")[:19]


def _ago(value: Any, now: float | None = None) -> str:
    if value is None:
        return "never"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if isinstance(value, datetime):
        value = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    secs = max(0.0, (now or time.time()) - float(value))
    if secs < 90:
        return f"{secs:.0f}s ago"
    if secs < 5400:
        return f"{secs / 60:.0f}m ago"
    if secs < 2 * 86400:
        return f"{secs / 3600:.1f}h ago"
    return f"{secs / 86400:.1f}d ago"


def create_app(
    engine: Engine,
    settings: Settings,
    *,
    broadcaster: Broadcaster | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    app = FastAPI(
        title="vmworker fleet",
        version="1",
        description="Hosts, VMs, requests and events of a vmworker fleet, from its event streams.",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    live = broadcaster or Broadcaster()
    app.state.engine, app.state.settings, app.state.live = engine, settings, live
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["iso"] = _iso
    templates.env.filters["ago"] = lambda v: _ago(v, clock())
    templates.env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, default=str)
    templates.env.globals["bar_chart"] = bar_chart
    templates.env.globals["series"] = series
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def now_dt() -> datetime:
        return datetime.fromtimestamp(clock(), UTC)

    def found(value: Any, what: str) -> Any:
        if value is None:
            raise HTTPException(404, f"no such {what}")
        return value

    def paged(fn: Callable[..., Any], conn: Any, **kw: Any) -> Any:
        try:
            return fn(conn, **{k: v for k, v in kw.items() if v is not None})
        except ValueError as exc:  # a cursor or a filter the store cannot read
            raise HTTPException(400, str(exc)) from None

    # -- the JSON API ------------------------------------------------------------------------
    @app.get("/api/v1/summary", tags=["fleet"])
    def summary(conn: Conn) -> Any:
        """Hosts by status, VMs by state, failures of the last hour, per-host charts."""
        return queries.fleet_summary(conn, clock())

    @app.get("/api/v1/hosts", tags=["hosts"])
    def hosts(
        conn: Conn,
        paging: Paging,
        status: Annotated[str | None, Query(description="up, late, down or offline")] = None,
        q: Annotated[str | None, Query(description="text in the host id")] = None,
        offline_after: Annotated[
            float | None, Query(description="leave out hosts offline or down this many seconds")
        ] = None,
    ) -> Any:
        """Hosts by name, with their status (up, late, down, offline) computed now."""
        return paged(
            queries.list_hosts, conn, **paging, status=status, q=q, offline_after=offline_after,
            now=clock(),
        )  # fmt: skip

    @app.get("/api/v1/hosts/{host}", tags=["hosts"])
    def host(host: str, conn: Conn) -> Any:
        """Inventory, its VMs, queue depth, recent requests, heartbeat history."""
        return found(queries.get_host(conn, host), "host")

    @app.get("/api/v1/vms", tags=["vms"])
    def vms(
        conn: Conn,
        paging: Paging,
        host: str | None = None,
        state: str | None = None,
        q: Annotated[str | None, Query(description="text in the name or uuid")] = None,
        result: Annotated[str | None, Query(description="running, ok, failed, duplicate")] = None,
    ) -> Any:
        """VMs by host, name and uuid; `unknown` state on a host that is down."""
        return paged(
            queries.list_vms, conn, **paging, host=host, state=state, q=q, result=result,
            now=clock(),
        )  # fmt: skip

    @app.get("/api/v1/vms/{uuid}", tags=["vms"])
    def vm(uuid: str, conn: Conn) -> Any:
        """The VM's whole history: every request and state event, hooks with their output."""
        return found(queries.get_vm(conn, uuid), "VM")

    @app.get("/api/v1/requests", tags=["requests"])
    def requests_(
        conn: Conn,
        f: Filters,
        result: Annotated[str | None, Query(description="queued, running, ok, failed")] = None,
        replay_of: Annotated[str | None, Query(description="replays of this request")] = None,
    ) -> Any:
        """Requests newest first; `phase` is the request's latest."""
        return paged(queries.list_requests, conn, **f, result=result, replay_of=replay_of)

    @app.get("/api/v1/requests/{request_id}", tags=["requests"])
    def request_(request_id: str, conn: Conn) -> Any:
        """Every phase and event of a request, its hooks, errors and replays."""
        return found(queries.get_request(conn, request_id), "request")

    @app.get("/api/v1/events", tags=["events"])
    def events(
        conn: Conn,
        f: Filters,
        request_id: str | None = None,
        kind: Annotated[str | None, Query(description="op, state or host")] = None,
        type: Annotated[str | None, Query(description="vmworker.<host>.start_vm.after")] = None,
    ) -> Any:
        """Stored events, newest first (heartbeats are kept per host, not as events)."""
        return paged(queries.list_events, conn, **f, request_id=request_id, kind=kind, type=type)

    @app.get("/api/v1/failures", tags=["requests"])
    def failures(
        conn: Conn,
        paging: Paging,
        since: Annotated[datetime | None, Query(description="ISO 8601")] = None,
        host: str | None = None,
    ) -> Any:
        """Failed operations, newest first, with the failing hook and its stderr."""
        return paged(queries.failures, conn, **paging, since=epoch(since), host=host)

    @app.get("/api/v1/dead-letters", tags=["requests"])
    def dead_letters(conn: Conn, host: str | None = None) -> Any:
        return queries.list_dead_letters(conn, host=host)

    @app.get("/api/v1/charts/ops-per-minute", tags=["charts"])
    def ops_per_minute(
        conn: Conn, host: str | None = None, minutes: Annotated[int, Query(ge=1, le=1440)] = 60
    ) -> Any:
        """Operations finished and failed per minute, oldest first."""
        return queries.ops_per_minute(conn, host=host, minutes=minutes, now=clock())

    @app.get("/api/v1/charts/failure-rate", tags=["charts"])
    def failure_rate(conn: Conn, minutes: Annotated[int, Query(ge=1, le=1440)] = 60) -> Any:
        """Per host: operations, failures and their rate; most failures first."""
        return queries.failure_rate(conn, minutes=minutes, now=clock())

    @app.get("/api/v1/stream", tags=["events"])
    async def stream(
        request: Request, host: str | None = None, vm: str | None = None
    ) -> EventSourceResponse:
        """Server-sent events: each stored event as it is committed (`event: stored`),
        optionally only a host's or a VM's."""
        sub = live.subscribe(host=host, vm=vm)

        async def gen() -> AsyncIterator[dict[str, Any]]:
            try:
                yield {"event": "hello", "data": json.dumps({"host": host, "vm": vm})}
                while not await request.is_disconnected():
                    try:
                        ev = await asyncio.wait_for(sub.queue.get(), timeout=1.0)
                    except TimeoutError:
                        continue
                    yield {"event": "stored", "data": json.dumps(ev, default=str)}
            finally:
                live.unsubscribe(sub)

        return EventSourceResponse(gen(), ping=int(SSE_PING_S))

    # -- actions -----------------------------------------------------------------------------
    def _audit(
        who: str, action: str, target: str | None, params: dict[str, Any], result: Any
    ) -> None:
        from worker.fleet.store import record_audit

        with engine.begin() as conn:
            record_audit(
                conn,
                who=who,
                action=action,
                target=target,
                params=params,
                result=result,
                dry_run=bool(params.get("dry_run")),
            )

    app.state.audit = _audit

    def act(
        who: str, action: str, target: str, params: dict[str, Any], run: Callable[[], Any]
    ) -> Any:
        try:
            out = run()
        except actions.ActionError as exc:
            _audit(who, action, target, params, {"error": str(exc), "status": exc.status})
            raise HTTPException(exc.status, str(exc)) from None
        _audit(who, action, target, params, {"ok": True, **_brief(out)})
        return out

    @app.post("/api/v1/actions/replay", tags=["actions"])
    def replay(body: ReplayIn, who: Who, conn: Conn) -> Any:
        """Replay a logged or dead-lettered request (a dry run by default)."""
        logged = None
        if body.source == "log":
            logged = actions.logged_message(conn, body.request_id)
        return act(
            who,
            "replay",
            body.request_id,
            body.model_dump(),
            lambda: actions.replay(
                settings,
                body.request_id,
                source=body.source,
                host=body.host,
                logged=logged,
                as_new=body.as_new,
                to_host=body.to_host,
                dry_run=body.dry_run,
            ),
        )

    @app.post("/api/v1/actions/drain", tags=["actions"])
    def drain(body: DrainIn, who: Who) -> Any:
        """Move every VM of a host to others with migrate_vm (a dry run by default)."""
        return act(
            who,
            "drain",
            body.host,
            body.model_dump(),
            lambda: actions.drain(
                settings, body.host, body.to, by_memory=body.by_memory, dry_run=body.dry_run
            ),
        )

    # -- the web UI --------------------------------------------------------------------------
    def page(request: Request, name: str, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("now", now_dt())
        ctx["actions_enabled"] = bool(settings.fleet.token)
        return templates.TemplateResponse(request, name, ctx)

    @app.get("/", include_in_schema=False)
    def fleet_page(request: Request, conn: Conn) -> HTMLResponse:
        now = clock()
        s = queries.fleet_summary(conn, now, top=CHART_HOSTS)
        attention = [
            h
            for status in ("down", "late")
            for h in queries.list_hosts(conn, status=status, limit=ATTENTION_MAX, now=now)["items"]
        ]
        per_host = {
            r["host"]: series(queries.ops_per_minute(conn, host=r["host"], now=now), "ops")
            for r in s["hosts_by_failures"]
        }
        recent = queries.failures(conn, limit=8)["items"]
        return page(
            request, "fleet.html", s=s, attention=attention, per_host=per_host, recent=recent
        )

    @app.get("/ui", include_in_schema=False)
    def ui_root() -> RedirectResponse:
        return RedirectResponse("/")

    @app.get("/hosts", include_in_schema=False)
    def hosts_page(
        request: Request,
        conn: Conn,
        status: str | None = None,
        q: str | None = None,
        cursor: str | None = None,
    ) -> HTMLResponse:
        rows = paged(
            queries.list_hosts, conn, status=status, q=q, limit=100, cursor=cursor, now=clock()
        )
        return page(request, "hosts.html", rows=rows, status=status, q=q)

    @app.get("/hosts/{host}", include_in_schema=False)
    def host_page(request: Request, host: str, conn: Conn) -> HTMLResponse:
        h = found(queries.get_host(conn, host, now=clock()), "host")
        beats = [(str(b["at"])[11:19], float(b["queue_depth"] or 0)) for b in h["heartbeats"]]
        return page(request, "host.html", h=h, beats=beats, live_host=host)

    @app.get("/vms", include_in_schema=False)
    def vms_page(
        request: Request,
        conn: Conn,
        host: str | None = None,
        state: str | None = None,
        q: str | None = None,
        cursor: str | None = None,
    ) -> HTMLResponse:
        rows = paged(
            queries.list_vms, conn, host=host, state=state, q=q, limit=100, cursor=cursor,
            now=clock(),
        )  # fmt: skip
        return page(request, "vms.html", rows=rows, host=host, state=state, q=q)

    @app.get("/vms/{uuid}", include_in_schema=False)
    def vm_page(request: Request, uuid: str, conn: Conn) -> HTMLResponse:
        return page(request, "vm.html", v=found(queries.get_vm(conn, uuid), "VM"), live_vm=uuid)

    @app.get("/requests", include_in_schema=False)
    def requests_page(request: Request, conn: Conn, f: Filters) -> HTMLResponse:
        rows = paged(queries.list_requests, conn, **f)
        return page(request, "requests.html", rows=rows, f=f)

    @app.get("/requests/{request_id}", include_in_schema=False)
    def request_page(request: Request, request_id: str, conn: Conn) -> HTMLResponse:
        r = found(queries.get_request(conn, request_id), "request")
        return page(request, "request.html", r=r, request_id=request_id)

    @app.get("/failures", include_in_schema=False)
    def failures_page(
        request: Request, conn: Conn, host: str | None = None, cursor: str | None = None
    ) -> HTMLResponse:
        return page(
            request,
            "failures.html",
            rows=paged(queries.failures, conn, host=host, limit=50, cursor=cursor),
            dead=queries.list_dead_letters(conn, host=host),
            rates=queries.failure_rate(conn, now=clock()),
            host=host,
        )

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Any:
        if request.url.path.startswith("/api/"):
            return JSONResponse(
                {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
            )
        return templates.TemplateResponse(
            request,
            "error.html",
            {"status": exc.status_code, "detail": exc.detail, "actions_enabled": False},
            status_code=exc.status_code,
        )

    return app


def series(points: list[dict[str, Any]], key: str) -> list[tuple[str, float]]:
    """A chart's points from `ops_per_minute`: (HH:MM, value), oldest first."""
    return [(str(p["minute"])[11:16], float(p[key] or 0)) for p in points]


def _brief(out: Any) -> dict[str, Any]:
    """What an action's audit row keeps of its answer: the request ids sent or planned."""
    rows = out.get("replays") or out.get("moves") or []
    return {"count": len(rows), "ids": [r.get("new_request_id") or r.get("vm") for r in rows]}
