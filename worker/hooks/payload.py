"""A chain's payload between steps: its bytes, what they parse to, and whether an edit is kept.

The engine hands each step the last good payload and judges what the step left: an edit is
kept only after rc 0 and if it still parses (XML, entities not expanded; or JSON), and an edit
that changes only the form is no change. Between script steps the payload file is rewritten
from the last good bytes, never through what a script left at its path.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
from threading import local
from typing import Any

from lxml import etree

from worker.hooks.points import HookPoint

_parsers = local()


def _xml_parser() -> etree.XMLParser:
    """This thread's parser (an lxml parser may not be shared between threads)."""
    try:
        parser: etree.XMLParser = _parsers.xml
    except AttributeError:
        # no entity expansion, no network: a hook's output is not trusted to be benign
        parser = _parsers.xml = etree.XMLParser(
            resolve_entities=False, no_network=True, huge_tree=False
        )
    return parser


def parse(point: HookPoint, data: bytes) -> Any:
    """The payload parsed (lxml tree or JSON value); raises ValueError if it does not parse."""
    if point.is_xml:
        try:
            return etree.ElementTree(etree.fromstring(data, _xml_parser()))
        except etree.XMLSyntaxError as exc:
            raise ValueError(f"invalid XML: {exc}") from None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"invalid JSON: {exc}") from None


_UNPARSED: Any = object()


class Payload:
    """The last good payload of a chain: its bytes, and (parsed once, on demand) what they
    parse to. The parsed form is the engine's own, never handed to a hook: each hook gets a
    fresh one, a copy of it where a copy is the same as parsing the bytes again."""

    __slots__ = ("_canon", "_copyable", "_parsed", "data")

    def __init__(self, data: bytes, parsed: Any = _UNPARSED) -> None:
        self.data = data
        self._parsed = parsed  # _UNPARSED, None (does not parse), or the tree / JSON value
        self._canon: Any = _UNPARSED
        self._copyable: bool | None = None

    def parsed(self, hp: HookPoint) -> Any:
        if self._parsed is _UNPARSED:
            try:
                self._parsed = parse(hp, self.data)
            except ValueError:
                self._parsed = None
        return self._parsed

    def canonical(self, hp: HookPoint) -> Any:
        """A form in which two payloads compare equal iff they mean the same (None:
        unparseable)."""
        if self._canon is _UNPARSED:
            parsed = self.parsed(hp)
            if parsed is not None and hp.is_xml:
                parsed = etree.tostring(parsed.getroot(), method="c14n")
            self._canon = parsed
        return self._canon

    def for_hook(self, hp: HookPoint) -> Any:
        """What an in-process hook gets: the payload parsed afresh (None when it is empty or
        does not parse)."""
        if not self.data.strip():
            return None
        if not hp.is_xml:
            try:
                return parse(hp, self.data)
            except ValueError:
                return None
        tree = self.parsed(hp)
        if tree is None:
            return None
        if self._copyable is None:
            # lxml copies the root with the document's settings (version, encoding,
            # standalone) but not always what lies around it (a DTD; comments or processing
            # instructions after the root come out reversed): copy only a lone root
            root = tree.getroot()
            self._copyable = (
                root.getprevious() is None
                and root.getnext() is None
                and tree.docinfo.internalDTD is None
                and not tree.docinfo.doctype
            )
        if self._copyable:
            return etree.ElementTree(copy.copy(tree.getroot()))
        return parse(hp, self.data)

    def text(self, hp: HookPoint) -> str:
        """As `_final_text(hp, self.data)`."""
        tree = self.parsed(hp) if hp.is_xml else None
        if tree is None:
            return _final_text(hp, self.data)
        return etree.tostring(tree, encoding="unicode")


def serialize(point: HookPoint, value: Any) -> bytes:
    if point.is_xml:
        return etree.tostring(value, encoding="UTF-8")
    return json.dumps(value).encode("utf-8")


def _final_text(point: HookPoint, data: bytes) -> str:
    if point.is_xml:
        # lxml text without the XML declaration, so that etree.fromstring(str) accepts it
        return etree.tostring(parse(point, data), encoding="unicode")
    return data.decode("utf-8")


def judge(
    hp: HookPoint, good: Payload, new: bytes, rc: int, timed_out: bool = False
) -> tuple[Payload, bool, str | None]:
    """(payload to go on with, changed, why the edit was discarded); what is parsed of an
    accepted edit is kept with it for the next step."""
    if new == good.data:
        return good, False, None
    if timed_out:
        return good, False, "timed out"
    if rc != 0:
        return good, False, f"exited {rc}"
    try:
        parsed = parse(hp, new)
    except ValueError as exc:
        return good, False, str(exc)
    kept = Payload(new, parsed)
    if kept.canonical(hp) == good.canonical(hp):
        return good, False, None  # rewritten but means the same: keep the old text
    return kept, True, None


def restore(path: str, data: bytes) -> None:
    """Put the last good payload back for the next step, as a new regular file.

    Never through whatever a script left at the path (a symlink, say).
    """
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        os.unlink(path)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
