"""The one helper every section uses: make an element with string attributes."""

from __future__ import annotations

from lxml import etree

Attr = str | int | None


def _fill(el: etree._Element, text: str | None, attrs: dict[str, Attr]) -> etree._Element:
    for key, value in attrs.items():
        if value is not None:
            el.set(key.rstrip("_"), str(value))
    if text is not None:
        el.text = text
    return el


def element(tag: str, text: str | None = None, **attrs: Attr) -> etree._Element:
    """`<tag attrs>text</tag>`; attributes that are None are left out (`class_` gives `class`)."""
    return _fill(etree.Element(tag), text, attrs)


def sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: Attr) -> etree._Element:
    """Append a child made as by `element` to `parent` and return it."""
    return _fill(etree.SubElement(parent, tag), text, attrs)


def yesno(flag: bool) -> str:
    return "yes" if flag else "no"


def onoff(flag: bool) -> str:
    return "on" if flag else "off"
