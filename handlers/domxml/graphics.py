"""Remote display: `<graphics>` (VNC or SPICE), `<video>`, `<sound>` and the USB tablet."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, sub, yesno
from handlers.spec import GraphicsSpec, SpiceSpec, VideoSpec


def graphics(spec: GraphicsSpec) -> etree._Element:
    if spec.port is None:
        el = element("graphics", type=spec.type, port="-1", autoport="yes")
    else:
        el = element("graphics", type=spec.type, port=spec.port, autoport="no")
    if spec.password is not None:
        el.set("passwd", spec.password)
    sub(el, "listen", type="address", address=str(spec.listen))
    if spec.type == "spice":
        _spice_options(el, spec.spice or SpiceSpec())
    return el


def _spice_options(el: etree._Element, s: SpiceSpec) -> None:
    sub(el, "image", compression=s.image_compression)
    sub(el, "jpeg", compression=s.jpeg_compression)
    sub(el, "zlib", compression=s.zlib_compression)
    sub(el, "playback", compression="on" if s.playback_compression else "off")
    sub(el, "streaming", mode=s.streaming_mode)
    sub(el, "mouse", mode=s.mouse_mode)
    sub(el, "clipboard", copypaste=yesno(s.clipboard))
    sub(el, "filetransfer", enable=yesno(s.file_transfer))


def default_video(spec: GraphicsSpec) -> VideoSpec:
    """vga for VNC, qxl for SPICE."""
    return VideoSpec(model="qxl" if spec.type == "spice" else "vga")


def video(spec: VideoSpec) -> list[etree._Element]:
    """One `<video>`, or one per monitor for multi-monitor qxl (as seed 003 does)."""
    out = []
    for i in range(spec.monitors):
        el = element("video")
        primary = "yes" if spec.monitors > 1 and i == 0 else None
        heads = spec.heads if spec.heads > 1 else None
        sub(el, "model", type=spec.model, vram=spec.vram_kib, heads=heads, primary=primary)
        out.append(el)
    return out


def sound(model: str) -> etree._Element:
    return element("sound", model=model)


def tablet(bus: str) -> etree._Element:
    """An absolute pointer, so the remote mouse tracks the local one."""
    return element("input", type="tablet", bus=bus)
