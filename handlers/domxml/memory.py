"""Guest memory: `<maxMemory>` for hotplug, `<memory>`, `<currentMemory>`, `<memoryBacking>`."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, sub
from handlers.spec import VmSpec


def memory(spec: VmSpec) -> list[etree._Element]:
    out = []
    if spec.max_memory_mib is not None:
        out.append(
            element("maxMemory", str(spec.max_memory_mib), slots=spec.memory_slots, unit="MiB")
        )
    out.append(element("memory", str(spec.memory_mib), unit="MiB"))
    out.append(element("currentMemory", str(spec.memory_mib), unit="MiB"))
    return out


def memory_backing(spec: VmSpec) -> etree._Element | None:
    """`<memoryBacking><hugepages/>` when huge pages are asked for."""
    if spec.hugepages is None:
        return None
    backing = element("memoryBacking")
    pages = sub(backing, "hugepages")
    if spec.hugepages.size_kib is not None:
        sub(pages, "page", size=spec.hugepages.size_kib, unit="KiB")
    return backing
