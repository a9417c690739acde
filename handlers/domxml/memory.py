"""Guest memory: `<memory>` and `<currentMemory>`."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element
from handlers.spec import VmSpec


def memory(spec: VmSpec) -> list[etree._Element]:
    return [
        element("memory", str(spec.memory_mib), unit="MiB"),
        element("currentMemory", str(spec.memory_mib), unit="MiB"),
    ]
