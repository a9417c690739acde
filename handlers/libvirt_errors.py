"""libvirt errors as OpErrors: transient or permanent by error code and domain, never by text."""

from __future__ import annotations

import libvirt

from handlers.errors import OpError

# the connection to libvirtd itself went away: retry after reconnecting
_CONNECTION_CODES = {libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_RPC}
_CONNECTION_DOMAINS = {libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE}
_CONNECTION_DOMAIN_CODES = {
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_INTERNAL_ERROR,
    libvirt.VIR_ERR_OPERATION_FAILED,
}
# the domain is busy for a moment: a job holds the state-change lock, a device or the agent is busy
_BUSY_CODES = {
    libvirt.VIR_ERR_OPERATION_TIMEOUT,
    libvirt.VIR_ERR_RESOURCE_BUSY,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    libvirt.VIR_ERR_AGENT_UNSYNCED,
    libvirt.VIR_ERR_BLOCK_COPY_ACTIVE,
}
_NAMES = {getattr(libvirt, n): n[8:].lower() for n in dir(libvirt) if n.startswith("VIR_ERR_")}


def is_connection_error(exc: libvirt.libvirtError) -> bool:
    code, dom = exc.get_error_code(), exc.get_error_domain()
    return code in _CONNECTION_CODES or (
        dom in _CONNECTION_DOMAINS and code in _CONNECTION_DOMAIN_CODES
    )


def from_libvirt(exc: libvirt.libvirtError) -> OpError:
    """The OpError for a libvirt error, `transient` set when retrying can help."""
    code = exc.get_error_code() or 0
    connection = is_connection_error(exc)
    return OpError(
        code=_NAMES.get(code, f"libvirt_{code}"),
        message=(exc.get_error_message() or str(exc)).strip(),
        source="libvirt",
        libvirt_code=code,
        transient=connection or code in _BUSY_CODES,
        details={"libvirt_domain": exc.get_error_domain(), "connection_lost": connection},
    )
