"""Every operation this worker runs, by name. Importing this module imports each family of
handlers, which declares its own operations (`handlers.base.declare`)."""

from handlers import (  # noqa: F401  (declare their ops)
    devices,
    hibernation,
    lifecycle,
    migration,
    ticket,
)
from handlers.base import OPERATIONS, Operation

__all__ = ["OPERATIONS", "Operation"]
