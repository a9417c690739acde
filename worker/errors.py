"""Kept for importers from before `OpError` moved to `handlers.errors` (where both packages can
import it without a cycle); new code imports it from there."""

from handlers.errors import OpError, Source, validation

__all__ = ["OpError", "Source", "validation"]
