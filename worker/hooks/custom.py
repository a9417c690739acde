"""Custom properties: the operation's `custom` map, exported to hook scripts as env vars.

They come from the control plane, so a name must never let a message change how a hook
script is loaded or interpreted (PATH, LD_PRELOAD, PYTHONPATH, BASH_ENV, ...) or overwrite
the variables the engine itself sets (`_hook_*`, `vmId`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Exact names a custom property may not take.
RESERVED_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "vmId",
        # shells read these before running a single line of the script
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "IFS",
        "CDPATH",
        "GLOBIGNORE",
        "PS4",
        "SHELL",
        # other interpreters and the C library
        "PERL5LIB",
        "PERL5OPT",
        "PERLLIB",
        "RUBYLIB",
        "RUBYOPT",
        "NODE_OPTIONS",
        "NODE_PATH",
        "GCONV_PATH",
        "GLIBC_TUNABLES",
        "LOCPATH",
        "NLSPATH",
        "TMPDIR",
    }
)
# Prefixes a custom property name may not start with.
RESERVED_PREFIXES = ("LD_", "PYTHON", "_hook_", "VMWORKER_", "MALLOC_", "BASH_FUNC_")


class CustomPropertyError(ValueError):
    """A custom property that cannot be handed to hook scripts; the message names the key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"custom property {key!r}: {reason}")
        self.key = key
        self.reason = reason


def validate_custom(custom: Mapping[str, str]) -> None:
    """Raise CustomPropertyError for the first name or value that is not allowed."""
    if not isinstance(custom, Mapping):
        raise CustomPropertyError("<custom>", "must be a mapping of strings")
    for key, value in custom.items():
        if not isinstance(key, str) or not NAME_RE.match(key):
            raise CustomPropertyError(str(key), "name must match [A-Za-z_][A-Za-z0-9_]*")
        if key in RESERVED_NAMES or key.startswith(RESERVED_PREFIXES):
            raise CustomPropertyError(key, "name is reserved")
        if not isinstance(value, str):
            raise CustomPropertyError(key, f"value must be a string, not {type(value).__name__}")
        if "\0" in value:
            raise CustomPropertyError(key, "value contains NUL")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise CustomPropertyError(key, "value is not valid UTF-8 text") from None
