"""Operation handlers: one module per family of operations. A handler knows libvirt, never AMQP."""

from handlers.base import HANDLERS, Ctx, Handler, domain_state, register

__all__ = ["HANDLERS", "Ctx", "Handler", "domain_state", "register"]
