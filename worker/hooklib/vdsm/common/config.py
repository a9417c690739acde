"""VDSM's configuration: its defaults, then /etc/vdsm/vdsm.conf, then the drop-in directories.

As on an oVirt host: `/etc/vdsm/vdsm.conf`, then every `*.conf` of `/usr/lib/vdsm/vdsm.conf.d`,
`/run/vdsm/vdsm.conf.d` and `/etc/vdsm/vdsm.conf.d`, all sorted together by file name.
"""

import configparser
import glob
import os

from vdsm.common.config_defaults import DEFAULTS

_SYSCONFDIR = "/etc"
_DROPIN_BASES = ("/usr/lib/", "/run/", _SYSCONFDIR)


def set_defaults(cfg):
    for section, values in DEFAULTS.items():
        cfg.add_section(section)
        for key, value in values.items():
            cfg.set(section, key, value)


def read_configs(cfg, name):
    cfg.read(os.path.join(_SYSCONFDIR, name, name + ".conf"))
    dropins = []
    for base in _DROPIN_BASES:
        dropins.extend(glob.glob(os.path.join(base, name, name + ".conf.d", "*.conf")))
    dropins.sort(key=os.path.basename)
    cfg.read(dropins)


def load(name):
    cfg = configparser.ConfigParser()
    set_defaults(cfg)
    read_configs(cfg, name)
    return cfg


config = load("vdsm")
