"""The fleet server's data side: an indexed store of what the streams told (`store`), the
process that fills it from `vm.events.log` and `vm.ops.log` (`ingest`), and the questions the
API and the CLI ask of it (`queries`)."""
