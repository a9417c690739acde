"""What a chain reports: one result per step (script or in-process hook), and the whole chain.

These are what the events carry (`ChainResult.to_event()`) and what a failing `before_*`
chain's error is made of (`failure_stderr()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["script", "inproc"]


@dataclass(frozen=True)
class ScriptResult:
    """The outcome of one step of a chain (a script or an in-process hook)."""

    name: str
    rc: int
    duration_ms: int
    sha256: str | None
    changed_xml: bool = False
    stdout_tail: str = ""
    stderr_tail: str = ""
    refused: str | None = None
    timed_out: bool = False
    discarded: str | None = None
    kind: Kind = "script"

    @property
    def failed(self) -> bool:
        return self.rc != 0

    @property
    def changed(self) -> bool:
        return self.changed_xml

    @property
    def unexpected_rc(self) -> bool:
        """rc outside VDSM's 0/1/2 (a signal gives a negative rc)."""
        return self.rc > 2 or self.rc < 0

    def to_event(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "rc": self.rc,
            "unexpected_rc": self.unexpected_rc,
            "duration_ms": self.duration_ms,
            "sha256": self.sha256,
            "changed_xml": self.changed_xml,
            "stderr_tail": self.stderr_tail,
            "stdout_tail": self.stdout_tail,
            "refused": self.refused,
            "timed_out": self.timed_out,
            "discarded": self.discarded,
        }


@dataclass
class ChainResult:
    """A whole chain: the final payload and every step's outcome, in run order."""

    point: str
    payload: str
    scripts: list[ScriptResult] = field(default_factory=list)
    stopped: bool = False
    input_payload: str = field(default="", repr=False)

    @property
    def failed(self) -> bool:
        """True when any step failed (rc != 0), refused and timed-out steps included."""
        return any(s.rc != 0 for s in self.scripts)

    @property
    def changed(self) -> bool:
        return self.payload != self.input_payload

    @property
    def first_failure(self) -> ScriptResult | None:
        return next((s for s in self.scripts if s.rc != 0), None)

    @property
    def failures(self) -> list[ScriptResult]:
        return [s for s in self.scripts if s.rc != 0]

    def failure_stderr(self) -> str:
        """Every failing step's stderr tail, each labelled with its name and rc."""
        parts = []
        for s in self.failures:
            what = "refused" if s.refused else "timed out" if s.timed_out else f"rc={s.rc}"
            parts.append(f"[{s.name}: {what}] {s.stderr_tail.strip() or '(no stderr)'}")
        return "\n".join(parts)

    def to_event(self) -> list[dict[str, Any]]:
        return [s.to_event() for s in self.scripts]
