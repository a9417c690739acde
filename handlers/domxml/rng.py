"""`<rng>`: a virtio RNG fed from a host random device."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, sub
from handlers.spec import RngSpec


def rng(spec: RngSpec) -> etree._Element:
    el = element("rng", model="virtio")
    if spec.rate_bytes is not None:
        sub(el, "rate", bytes=spec.rate_bytes, period=spec.rate_period_ms)
    sub(el, "backend", spec.source, model="random")
    return el
