"""Sizes in bytes, as VDSM names them."""

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4
PiB = 1024**5
