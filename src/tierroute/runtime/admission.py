"""How many requests one process takes at once, across every front it serves (the gRPC port
and, on the router, the OpenAI-compatible HTTP front): one count, one limit, one message.

A request over the limit is refused at once (gRPC RESOURCE_EXHAUSTED with a retry pushback;
HTTP 429 with Retry-After), never queued: a client that retries with backoff finds the place.
"""

from __future__ import annotations


class InFlight:
    """At most `limit` requests in flight; `setting` names the setting that raises it."""

    def __init__(self, limit: int, setting: str, retry_after_ms: int = 100) -> None:
        self.limit = limit
        self.setting = setting
        self.retry_after_ms = retry_after_ms
        self.count = 0

    def enter(self) -> bool:
        """Take a place (False: the limit is reached; the request is refused)."""
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        self.count -= 1

    def refusal(self) -> str:
        """What a refused request is told."""
        return (
            f"the service has {self.count} requests in flight, its limit of {self.limit} "
            f"({self.setting}); retry after {self.retry_after_ms} ms with backoff"
        )
