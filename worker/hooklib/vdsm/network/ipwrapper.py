"""vdsm.network.ipwrapper: the link types and `Link._detectType`, which hooks use.

The rest of VDSM's network stack (netlink, netinfo, nmstate) is not provided."""

import array
import errno
import fcntl
import os
import socket
import struct

SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x00000003
_DRVINFO = "= I 32s 32s 32s 32s 32s 12s 5I"
_IFREQ = "16sPi"


class LinkType:
    """The kinds of network device VDSM tells apart."""

    NIC = "nic"
    VLAN = "vlan"
    BOND = "bond"
    BRIDGE = "bridge"
    LOOPBACK = "loopback"
    MACVLAN = "macvlan"
    DUMMY = "dummy"
    TUN = "tun"
    OVS = "openvswitch"
    TEAM = "team"
    VETH = "veth"
    VF = "vf"
    IPOIB = "ipoib"


def driver_name(device):
    """The kernel driver of a network device (ethtool's GDRVINFO); OSError as the kernel says."""
    buff = array.array("b", b"\0" * struct.calcsize(_DRVINFO))
    cmd = struct.pack("= I", ETHTOOL_GDRVINFO)
    buff[0 : len(cmd)] = array.array("b", cmd)
    req = struct.pack(_IFREQ, device.encode(), *buff.buffer_info())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, SIOCETHTOOL, req)
    return struct.unpack(_DRVINFO, buff.tobytes())[1].rstrip(b"\0").decode()


class Link:
    """Only the device-type detection of VDSM's Link."""

    @staticmethod
    def _detectType(name):
        """The LinkType of device `name`, from its driver, as VDSM decides it."""
        try:
            driver = driver_name(name)
        except OSError as exc:
            if exc.errno == errno.EOPNOTSUPP:
                return LinkType.LOOPBACK if name == "lo" else LinkType.DUMMY
            raise
        if driver in (
            LinkType.BRIDGE,
            LinkType.MACVLAN,
            LinkType.TUN,
            LinkType.OVS,
            LinkType.TEAM,
            LinkType.VETH,
        ):
            return driver
        if driver == "bonding":
            return LinkType.BOND
        if "VLAN" in driver or "vlan" in driver:
            return LinkType.VLAN
        if os.path.exists(f"/sys/class/net/{name}/device/physfn/"):
            return LinkType.VF
        return LinkType.NIC
