"""vmworker for control planes: `vmworker.client` (Client, AsyncClient) submits operations to
hosts' workers and waits for their outcomes, watches events and replays messages
(docs/client.md)."""
