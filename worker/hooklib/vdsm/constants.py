"""vdsm.constants: VDSM's older name for vdsm.common.constants."""

from vdsm.common.constants import *  # noqa: F403
