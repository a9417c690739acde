"""vdsm.common.conv: `tobool`, the same function as hooking's."""

from hooking import tobool

__all__ = ["tobool"]
