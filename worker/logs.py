"""structlog set-up: JSON lines on stderr, every one with `host`; what a failed operation logs.

Event names are dotted snake_case words, the area first (`worker.starting`, `op.failed`,
`hook.failed`); docs/operations.md lists each with its level and fields. Lines of the libraries
(kombu, py-amqp) go through the same renderer, with their own text as `event` and `logger`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from worker import redact
from worker.errors import OpError

STDERR_TAIL = 2000  # characters of a hook's stderr a log line keeps (its end)

_host: str | None = None


def _add_host(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """`host` on every line, from any thread (contextvars do not reach new threads)."""
    if _host is not None:
        event_dict.setdefault("host", _host)
    return event_dict


class _ToStderr(logging.Handler):
    """Writes to the sys.stderr of the moment (tests swap it), as structlog's lines do."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


_handler: _ToStderr | None = None


def configure(level: str = "info", *, json: bool = True, host: str | None = None) -> None:
    """Log at `level` and above; with `host`, every line of this process carries it."""
    global _host, _handler
    _host = host
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        _add_host,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.format_exc_info,
            redact.processor,  # last before rendering: the traceback is text by now
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = _ToStderr()
    _handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redact.processor,
                renderer,
            ],
        )
    )
    root.addHandler(_handler)
    root.setLevel(max(lvl, logging.WARNING))  # the libraries' info lines are not ours to show


def tail(text: str | None, limit: int = STDERR_TAIL) -> str:
    return (text or "")[-limit:]


def error_fields(err: OpError) -> dict[str, Any]:
    """What a log line says of a failed operation: code, source, message, the failing hook and
    the end of its stderr."""
    out: dict[str, Any] = {
        "error_code": err.code,
        "error_source": err.source,
        "error": err.message,
    }
    if err.hook:
        out["hook"] = err.hook
    if err.details.get("stderr"):
        out["stderr_tail"] = tail(str(err.details["stderr"]))
    if err.libvirt_code is not None:
        out["libvirt_code"] = err.libvirt_code
    return out


def operation_finished(log: Any, error: OpError | None, **fields: Any) -> None:
    """`op.finished` (info), or `op.failed` (warning, with the error's fields)."""
    if error is None:
        log.info("op.finished", **fields)
    else:
        log.warning("op.failed", **fields, **error_fields(error))
