"""vdsm.utils: the one helper hooks use from it."""

import sys


class closing:
    """Close the object on leaving the block, as VDSM's: a failing close() is raised, unless
    the block itself raised (then it is only reported on stderr)."""

    def __init__(self, obj, log="utils.closing"):
        self.obj = obj
        self.log = log

    def __enter__(self):
        return self.obj

    def __exit__(self, t, v, tb):
        try:
            self.obj.close()
        except Exception as exc:
            if t is None:
                raise
            sys.stderr.write(f"{self.log}: error closing {self.obj!r}: {exc}\n")
