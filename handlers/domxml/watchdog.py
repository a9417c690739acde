"""When the guest hangs or panics: `<watchdog>` and `<panic>`."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element
from handlers.spec import PanicSpec, WatchdogSpec


def watchdog(spec: WatchdogSpec) -> etree._Element:
    return element("watchdog", model=spec.model, action=spec.action)


def panic(spec: PanicSpec) -> etree._Element:
    return element("panic", model=spec.model)
