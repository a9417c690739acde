"""vdsm.hook.hooking is vmworker's `hooking` module itself (one module, one set of helpers)."""

import sys

import hooking

sys.modules[__name__] = hooking
