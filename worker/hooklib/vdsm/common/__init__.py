"""vdsm.common: the small pure helpers of VDSM that hooks import."""
