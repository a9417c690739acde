"""vdsm.client talks to VDSM's own daemon, which a vmworker host does not run."""

raise ImportError(
    "vdsm.client needs VDSM's own daemon (vdsmd) and its JSON-RPC API, which vmworker does "
    "not provide: a hook that calls it cannot run here",
    name=__name__,
)
