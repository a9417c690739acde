"""The CLI's side of the fleet server: `vmworker monitor` and `vmworker history` ask its HTTP API
(when `fleet_url` is set, or `--fleet-url`) instead of reading the streams from their start.
Answers are turned into what the stream readers give (a `FleetView`, timeline entries), so the
rendering is the same either way."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import click
import httpx

from worker.history import LogMessage, timeline
from worker.monitor import Failure, FleetView, HostRow, VmRow, parse_time

PAGE = 500
MAX_ROWS = 20_000  # VMs (or hosts) one monitor picture asks for
MAX_REQUESTS = 500  # requests of one VM whose messages `history --vm` fetches
_LIVE = {"up": "online", "late": "online", "down": "online", "offline": "offline"}


class FleetApiError(click.ClickException):
    """The fleet server did not answer, or not as expected: one line, exit code 2."""

    exit_code = 2


class FleetClient:
    def __init__(self, url: str, *, timeout: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout)

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def get(self, path: str, **params: Any) -> Any:
        """GET `path`; None for a 404; FleetApiError for anything else that is not a 200."""
        query = {k: v for k, v in params.items() if v is not None}
        try:
            r = self.http.get(path, params=query)
        except httpx.HTTPError as exc:
            raise FleetApiError(f"fleet server {self.url}: {exc}") from None
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            said = f"HTTP {r.status_code} {r.text[:200]}"
            raise FleetApiError(f"fleet server {self.url}{path}: {said}")
        return r.json()

    def pages(self, path: str, *, most: int = MAX_ROWS, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a paged list, following `next`, at most `most`."""
        cursor, n = None, 0
        while True:
            doc = self.get(path, limit=PAGE, cursor=cursor, **params) or {}
            for item in doc.get("items", []):
                yield item
                n += 1
                if n >= most:
                    return
            cursor = doc.get("next")
            if not cursor:
                return


# -- monitor --------------------------------------------------------------------------------
def load_view(
    client: FleetClient, *, host: str | None = None, offline_after: float | None = None
) -> FleetView:
    """The monitor's picture from the fleet server: hosts, VMs and recent failures."""
    view = FleetView()
    hosts = client.pages("/api/v1/hosts", q=host, offline_after=offline_after)
    for h in hosts:
        if host and h["host"] != host:
            continue
        view.hosts[h["host"]] = HostRow(
            host=h["host"],
            status=_LIVE.get(h.get("status") or "", "unknown"),
            last_seen=parse_time(h.get("last_seen")),
            interval=h.get("interval_s"),
            version=h.get("version"),
            libvirt=_libvirt(h.get("libvirt")),
            hypervisor=h.get("hypervisor"),
            domains=h.get("vms_total"),
            queue_depth=h.get("queue_depth"),
            outbox=h.get("outbox"),
            hooks=h.get("hooks_count"),
            started_at=h.get("started_at"),
        )
    for v in client.pages("/api/v1/vms", host=host):
        row = VmRow(
            uuid=v["uuid"],
            name=v.get("name"),
            host=v.get("host"),
            last_change=v.get("last_change"),
            last_op=v.get("last_op"),
            result=v.get("result"),
            request_id=v.get("request_id"),
            op_at=parse_time(v.get("op_at")) or 0.0,
            error=v.get("error"),
        )
        row.state = v.get("state_reported") or v.get("state") or "unknown"
        row.state_at = parse_time(v.get("state_at")) or 0.0
        row.changed_at = parse_time(v.get("changed_at")) or 0.0
        view.vms[row.uuid] = row
    failures = client.get("/api/v1/failures", host=host, limit=view.max_failures) or {}
    for f in reversed(failures.get("items", [])):  # the view keeps them oldest first
        err = f"{f.get('error_source')}/{f.get('error_code')}: {f.get('error_message')}"
        view.failures.append(
            Failure(
                parse_time(f.get("at")) or 0.0,
                f.get("host"),
                f.get("vm"),
                f.get("vm_name"),
                f.get("op"),
                f.get("request_id"),
                err,
                f.get("hook"),
                f.get("stderr"),
            )
        )
    return view


def _libvirt(value: Any) -> str | None:
    if isinstance(value, dict):
        return str(value.get("version") or "") or None
    return None if value is None else str(value)


# -- history --------------------------------------------------------------------------------
def _message(m: dict[str, Any]) -> LogMessage:
    body = m.get("body")
    doc = body if isinstance(body, dict) else None
    raw = json.dumps(body).encode() if doc is not None else str(body or "").encode()
    return LogMessage(
        None,
        m.get("host") or "",
        m.get("request_id"),
        m.get("correlation_id"),
        parse_time(m.get("at")),
        dict(m.get("headers") or {}),
        {},
        raw,
        doc,
    )


def history_entries(
    client: FleetClient, *, request_id: str | None = None, vm: str | None = None
) -> list[dict[str, Any]]:
    """The timeline of a request (and its replays) or of a VM, as `vmworker history` prints it."""
    messages: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    if request_id:
        doc = client.get(f"/api/v1/requests/{request_id}")
        if doc is None:
            return []
        messages, events = doc.get("messages", []), [e["event"] for e in doc.get("events", [])]
    else:
        doc = client.get(f"/api/v1/vms/{vm}")
        if doc is None:
            return []
        events = [e["event"] for e in doc.get("events", [])]
        for r in doc.get("requests", [])[-MAX_REQUESTS:]:
            one = client.get(f"/api/v1/requests/{r['request_id']}") or {}
            messages += one.get("messages", [])
    seen: set[tuple[Any, ...]] = set()
    ops = []
    for m in messages:  # a request and its replays share messages: each once
        key = (m.get("request_id"), m.get("at"), m.get("host"))
        if key not in seen:
            seen.add(key)
            ops.append(_message(m))
    return timeline(ops, events, request_id=request_id, vm=vm)


def monitor(
    url: str,
    console: Any,
    *,
    once: bool,
    refresh: float,
    draw: Callable[[FleetView, float], Any],
) -> None:
    """`vmworker monitor` on the fleet server: the picture now (--once), or redrawn every
    `refresh` seconds from a fresh answer; `draw(view, now)` makes the picture (the
    terminal view's own `render`, with the command's filters)."""
    import time

    from rich.live import Live

    with FleetClient(url) as client:
        if once:
            with console.status(f"asking {url}..."):
                view = load_view(client)
            console.print(draw(view, time.time()))
            return
        view = load_view(client)
        with Live(draw(view, time.time()), console=console, auto_refresh=False) as live:
            try:
                while True:
                    time.sleep(max(refresh, 0.5))
                    view = load_view(client)
                    live.update(draw(view, time.time()), refresh=True)
            except KeyboardInterrupt:
                pass
