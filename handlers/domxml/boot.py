"""`<os>`: guest type, machine, firmware (BIOS or UEFI), boot order and boot menu."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, sub, yesno
from handlers.spec import OsSpec


def os_section(
    spec: OsSpec,
    *,
    loader: str | None = None,
    nvram: str | None = None,
    nvram_template: str | None = None,
) -> etree._Element:
    """`<os>`; the paths, when given, replace the spec's (storage-root-resolved versions)."""
    loader = loader or spec.loader
    nvram = nvram or spec.nvram
    nvram_template = nvram_template or spec.nvram_template
    os_el = element("os")
    sub(os_el, "type", "hvm", arch=spec.arch, machine=spec.machine)
    if spec.firmware == "uefi":
        if loader is None:
            # let libvirt pick a matching firmware from the host's descriptors
            os_el.set("firmware", "efi")
            fw = sub(os_el, "firmware")
            sub(fw, "feature", enabled=yesno(spec.secure_boot), name="enrolled-keys")
            sub(fw, "feature", enabled=yesno(spec.secure_boot), name="secure-boot")
        else:
            sub(
                os_el,
                "loader",
                loader,
                readonly="yes",
                secure=yesno(spec.secure_boot),
                type="pflash",
            )
        if nvram is not None or nvram_template is not None:
            sub(os_el, "nvram", nvram, template=nvram_template)
    for dev in spec.boot:
        sub(os_el, "boot", dev=dev)
    if spec.boot_menu:
        sub(os_el, "bootmenu", enable="yes", timeout=spec.boot_menu_timeout_ms)
    return os_el
