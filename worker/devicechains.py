"""Device hook chains: one chain per device of a domain that has custom properties of its own
(`before_device_create`, ...), each over that device's XML, with the device's custom properties
over the message's. What a chain edits is put back into the domain XML.

Only devices with custom properties, as in VDSM (`Vm._customDevices`): VDSM's device hooks are
written for that (allocate_net reads its property without checking it is there), so running
them on every disk would break a site's hooks that work under VDSM.

The runner calls it around the operations that declare `devices` (handlers/base.py); an incoming
migration calls it with `device_migrate_destination`. Where a chain has no hook, nothing is
parsed and nothing is started: the domain XML comes back as it went in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from handlers.domxml.devices import device_elements, read_custom
from handlers.errors import OpError
from worker.hooks import ChainResult, CustomPropertyError, HookEngine, get_point, validate_custom


@dataclass
class DeviceChains:
    """Every device's chain of one point: the domain XML after them and what each hook did."""

    point: str
    payload: str
    hooks: list[dict[str, Any]] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)  # whose chain ran (had custom), in order
    failed: tuple[str, ChainResult] | None = None  # the first device whose chain failed

    def error(self) -> OpError | None:
        """The operation's error when a chain failed (a `before_*` chain that aborts)."""
        if self.failed is None:
            return None
        device, res = self.failed
        first = res.first_failure
        return OpError(
            "hook_failed",
            f"{self.point} ({device}): {first.name if first else '?'} failed"
            f" (rc={first.rc if first else '?'})",
            "hook",
            hook=first.name if first else None,
            details={"stderr": res.failure_stderr(), "device": device},
        )


_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)


def _safe(custom: Mapping[str, str]) -> dict[str, str]:
    """The stored properties that are still valid ones (the metadata may have been edited)."""
    kept = {}
    for key, value in custom.items():
        try:
            validate_custom({key: value})
        except CustomPropertyError:
            continue
        kept[key] = value
    return kept


def run_device_chains(
    engine: HookEngine,
    point: str,
    domxml: str,
    *,
    vm_id: str,
    custom: Mapping[str, str] | None = None,
    context: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> DeviceChains:
    """Run `point`'s chain once per `<disk>`, `<interface>` and `<hostdev>` of `domxml` that has
    custom properties of its own (stored in the domain's metadata), in document order; each
    device's edit replaces it in the returned XML. A chain that fails
    stops the rest when the point aborts (`before_device_create`); otherwise all run.

    Each hook entry names its device (`disk:vda`, `interface:<mac>`, ...). Never raises for a
    hook's fault; ValueError for an unknown point.
    """
    hp = get_point(point)
    out = DeviceChains(point, domxml)
    if not engine.has_hooks(point):
        return out
    try:
        root = etree.fromstring(domxml.encode("utf-8"), _PARSER)
    except etree.XMLSyntaxError:
        return out  # no devices to name: nothing to run them on
    stored = read_custom(root)
    if not stored:
        return out  # no device has custom properties: no device chain runs
    base = dict(custom or {})
    changed = False
    for el, key in list(device_elements(root)):
        own = stored.get(key)
        if not own:
            continue
        res = engine.run_chain(
            point,
            etree.tostring(el, encoding="unicode", with_tail=False),
            vm_id=vm_id,
            custom={**base, **_safe(own)},
            error=error,
            context=context,
        )
        out.devices.append(key)
        out.hooks += [{"point": point, "device": key, **h} for h in res.to_event()]
        if res.changed:  # the engine kept the edit only if it parses
            new = etree.fromstring(res.payload.encode("utf-8"), _PARSER)
            new.tail = el.tail
            parent = el.getparent()
            assert parent is not None
            parent.replace(el, new)
            changed = True
        if res.failed and out.failed is None:
            out.failed = (key, res)
            if hp.aborts:
                break
    if changed:
        out.payload = etree.tostring(root, encoding="unicode")
    return out
