"""vdsm.common.commands: `execCmd`, the same function as hooking's."""

from hooking import execCmd

__all__ = ["execCmd"]
