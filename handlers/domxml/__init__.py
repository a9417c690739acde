"""Domain XML from a VM spec: one small module per domain section, composed in `domain`."""

from handlers.domxml.domain import (
    build_disk_xml,
    build_domain_xml,
    build_nic_xml,
    default_domain_type,
    domain_tree,
)
from handlers.domxml.general import XMLNS
from handlers.domxml.nics import stable_mac

__all__ = [
    "XMLNS",
    "build_disk_xml",
    "build_domain_xml",
    "build_nic_xml",
    "default_domain_type",
    "domain_tree",
    "stable_mac",
]
