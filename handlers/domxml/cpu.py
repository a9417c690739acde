"""Processors: `<vcpu>`."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element
from handlers.spec import VmSpec


def vcpu(spec: VmSpec) -> etree._Element:
    return element("vcpu", str(spec.vcpus), placement="static")
