"""`<memballoon>`."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, sub
from handlers.spec import BalloonSpec

DEFAULT_STATS_PERIOD_S = 10


def memballoon(spec: BalloonSpec) -> etree._Element:
    el = element("memballoon", model=spec.model)
    if spec.model == "virtio":
        period = DEFAULT_STATS_PERIOD_S if spec.stats_period_s is None else spec.stats_period_s
        if period:
            sub(el, "stats", period=period)
    return el
