"""Secrets an operation carries (a display password) never leave the worker in a report: its
events, its log lines, the dead-letter headers and what hooks printed are scrubbed of them.

A job's secrets are known from its message (`OpMessage.secrets()`); while it runs they are held
in a context variable, which the log processor below reads, so every log line of the job (the
hook engine's too, on hook threads that copy the context) is scrubbed as it is written.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any

MASK = "***"

_SECRETS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "vmworker_secrets", default=()
)


@contextmanager
def holding(secrets: Sequence[str]) -> Iterator[None]:
    """Scrub `secrets` from every log line written in this context until the block ends."""
    token = _SECRETS.set(tuple(s for s in secrets if s))
    try:
        yield
    finally:
        _SECRETS.reset(token)


def scrub(value: Any, secrets: Sequence[str]) -> Any:
    """`value` (a string, or dicts and lists of them) with each secret replaced by `***`."""
    if not secrets:
        return value
    if isinstance(value, str):
        for s in sorted(secrets, key=len, reverse=True):  # a secret inside a longer one
            value = value.replace(s, MASK)
        return value
    if isinstance(value, dict):
        return {k: scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(scrub(v, secrets) for v in value)
    return value


def processor(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: the current job's secrets out of every value of the line."""
    secrets = _SECRETS.get()
    if not secrets:
        return event_dict
    for key, value in list(event_dict.items()):
        event_dict[key] = scrub(value, secrets) if isinstance(value, str | dict | list) else value
    return event_dict
