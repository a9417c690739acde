"""`<clock>` and its timers."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, sub
from handlers.spec import VmSpec


def clock(spec: VmSpec) -> etree._Element:
    clk = element("clock", offset="utc")
    sub(clk, "timer", name="rtc", tickpolicy="catchup")
    sub(clk, "timer", name="pit", tickpolicy="delay")
    sub(clk, "timer", name="hpet", present="no")
    return clk
