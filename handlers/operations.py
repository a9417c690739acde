"""Every operation this worker runs, by name. Importing this module imports each family of
handlers, which declares its own operations (`handlers.base.declare`)."""

from handlers import devices, lifecycle  # noqa: F401  (declare their operations)
from handlers.base import OPERATIONS, Operation

__all__ = ["OPERATIONS", "Operation"]
