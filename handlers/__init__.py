"""Operation handlers: one module per family of operations. A handler knows libvirt, never AMQP.

Every declared operation, by name: `handlers.operations.OPERATIONS` (importing it imports
every family)."""

from handlers.base import Ctx, Operation, declare, domain_state

__all__ = ["Ctx", "Operation", "declare", "domain_state"]
