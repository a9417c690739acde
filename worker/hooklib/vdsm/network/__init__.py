"""vdsm.network: only `ipwrapper.Link`'s device-type detection is provided."""
