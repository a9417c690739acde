"""Operation handlers: one module per family of operations. A handler knows libvirt, never AMQP."""

from handlers.base import OPERATIONS, Ctx, Operation, declare, domain_state

__all__ = ["OPERATIONS", "Ctx", "Operation", "declare", "domain_state"]
