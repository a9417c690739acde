"""Errors as values: every failure an operation can have, with a code and a source.

Raised once where they happen (handlers and worker alike, so it lives where `handlers/` needs
nothing from `worker/`); the runner turns them into a `fail` event in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Source = Literal["validation", "expired", "unauthorized", "hook", "libvirt", "timeout", "internal"]


@dataclass
class OpError(Exception):
    """A failed operation: `code` is a short machine word, `source` says who failed."""

    code: str
    message: str
    source: Source = "internal"
    libvirt_code: int | None = None
    hook: str | None = None
    transient: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.source}/{self.code}: {self.message}"

    def to_event(self) -> dict[str, Any]:
        """The `error` object of a `fail` event (docs/protocol.md, Events)."""
        out: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "source": self.source,
            "libvirt_code": self.libvirt_code,
            "hook": self.hook,
        }
        out.update(self.details)
        return out


def validation(message: str, code: str = "invalid", **details: Any) -> OpError:
    return OpError(code=code, message=message, source="validation", details=details)
