"""Every operation this worker runs, by name. Importing this module imports each family of
handlers, which declares its own operations (`handlers.base.declare`)."""

from handlers import devices, hibernation, lifecycle, ticket  # noqa: F401  (declare their ops)
from handlers.base import OPERATIONS, Operation

__all__ = ["OPERATIONS", "Operation"]
