"""`<clock>` and its timers."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, sub, yesno
from handlers.spec import DEFAULT_TIMERS, ClockSpec


def clock(spec: ClockSpec) -> etree._Element:
    clk = element("clock", offset=spec.offset)
    timers = DEFAULT_TIMERS if spec.timers is None else spec.timers
    for t in timers:
        present = None if t.present is None else yesno(t.present)
        sub(clk, "timer", name=t.name, tickpolicy=t.tickpolicy, present=present)
    return clk
