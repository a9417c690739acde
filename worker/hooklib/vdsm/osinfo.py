"""vdsm.osinfo: what VDSM's hooks ask about the host."""

from collections import namedtuple

from vdsm.common import cpuarch

NestedVirtualization = namedtuple("NestedVirtualization", "enabled, kvm_module")


def nested_virtualization(sysfs="/sys"):
    """Whether the host's KVM module lets guests run KVM, and which module that is.

    `sysfs`: where the host's /sys is (VDSM's takes no argument and reads /sys)."""
    if cpuarch.is_ppc(cpuarch.real()):
        return NestedVirtualization(False, None)
    modules = ("kvm",) if cpuarch.is_s390(cpuarch.real()) else ("kvm_intel", "kvm_amd")
    for module in modules:
        try:
            with open(f"{sysfs}/module/{module}/parameters/nested") as f:
                if f.readline().strip() in ("Y", "1"):
                    return NestedVirtualization(True, module)
        except OSError:  # no such module, or unreadable: VDSM logs it and goes on
            continue
    return NestedVirtualization(False, None)
