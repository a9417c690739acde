"""vdsm - the parts of VDSM's Python package that real VDSM hooks import, for hook scripts.

The hook engine puts this package on the scripts' PYTHONPATH (never on the worker's own), so a
script written for an oVirt host runs unmodified: `from vdsm.hook import hooking` is vmworker's
`hooking`, and the small pure helpers hooks use (units, cpuarch, constants, config, osinfo,
libvirtconnection, ...) behave as VDSM's do. Anything else of VDSM (its daemon's API, its
network and storage stacks) is not here: importing it fails with an ImportError that says so,
which the hook's stderr, and so the event, carries.
"""

import sys
from importlib.abc import MetaPathFinder

_HERE = __name__


class _NotProvided(MetaPathFinder):
    """Asked last: a `vdsm.*` module that none of the real finders found."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(_HERE + "."):
            raise ModuleNotFoundError(
                f"{fullname} is part of VDSM itself, which vmworker does not provide to hooks "
                "(only vdsm.hook.hooking and small helpers: see vmworker's docs/hooks.md)",
                name=fullname,
            )
        return None


if not any(isinstance(f, _NotProvided) for f in sys.meta_path):
    sys.meta_path.append(_NotProvided())
