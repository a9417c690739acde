"""Raw XML passthrough: a `<domain>` fragment from the spec merged into the built domain.

Only when the host allows it. Children of the fragment's `<devices>` are added to ours,
children of its `<metadata>` to ours (except our own namespace), any other element is added
to `<domain>` unless the builder already made one of that name (set it in the spec instead).
"""

from __future__ import annotations

from lxml import etree

from handlers.domxml.devices import DEVICES_XMLNS
from handlers.domxml.general import XMLNS
from handlers.errors import OpError, validation

# no entities, no DTDs, no network: the fragment is data, never instructions to the parser
_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    remove_comments=True,
    remove_pis=True,
    huge_tree=False,
)


def _bad(message: str) -> OpError:
    return validation(f"raw_xml: {message}", code="invalid_raw_xml", field="raw_xml")


def parse(text: str) -> etree._Element:
    """The fragment's `<domain>` element, or a validation OpError naming `raw_xml`."""
    try:
        frag = etree.fromstring(text.encode("utf-8"), _PARSER)
    except etree.XMLSyntaxError as e:
        raise _bad(f"not well-formed XML ({e})") from None
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise _bad("a DOCTYPE is not allowed")
    if frag.tag != "domain":
        raise _bad(f"the root element must be <domain>, not <{frag.tag}>")
    if frag.attrib:
        names = ", ".join(str(k) for k in frag.attrib)
        raise _bad(f"<domain> attributes come from the spec (found {names})")
    return frag


def merge(root: etree._Element, text: str) -> None:
    """Merge the fragment `text` into the built `<domain>` `root`, in place."""
    frag = parse(text)
    devices = root.find("devices")
    metadata = root.find("metadata")
    assert devices is not None and metadata is not None
    for child in list(frag):
        if not isinstance(child.tag, str):
            continue
        if child.tag == "devices":
            devices.extend(c for c in list(child) if isinstance(c.tag, str))
        elif child.tag == "metadata":
            for m in list(child):
                if etree.QName(m).namespace in (XMLNS, DEVICES_XMLNS):
                    raise _bad(
                        "<metadata> may not use the vmworker namespaces; use spec.metadata"
                        " and the devices' custom"
                    )
                metadata.append(m)
        elif root.find(child.tag) is not None:
            name = etree.QName(child).localname
            raise _bad(f"<{name}> is built from the spec; set it there instead")
        else:
            root.append(child)
