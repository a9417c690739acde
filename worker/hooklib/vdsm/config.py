"""vdsm.config: VDSM's older name for vdsm.common.config."""

from vdsm.common.config import *  # noqa: F403
from vdsm.common.config import config

__all__ = ["config"]
