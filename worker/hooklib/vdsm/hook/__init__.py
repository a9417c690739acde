"""vdsm.hook: where VDSM keeps `hooking`."""
