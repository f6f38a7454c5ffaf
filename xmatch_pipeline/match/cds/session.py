"""The CDS client's HTTP session, holding one fleet-wide request slot per exchange.

Injected as the client's ``session_factory`` where the services are built, so the client
itself stays free of the database. The slot is held for the whole exchange (the request
and the reading of its answer; ``requests`` reads the body before returning unless asked
to stream) and released between attempts: a run backing off after a failure does not
keep the fleet's slot from others.

Interplay with the other CDS settings: each attempt of a chunk (``RETRIES`` + 1 at most)
takes a slot on its own, and waiting for one is bounded by the chunk's deadline
(``XMATCH_CDS_DEADLINE``); the time spent waiting counts against that deadline, since
the client's clock runs on. A run's own chunks go out in parallel up to the same limit,
each thread taking its own slot, so the fleet's total never exceeds it.
"""

from __future__ import annotations

from typing import Any

import requests

from xmatch_pipeline.match.cds.errors import CdsUnavailableError
from xmatch_pipeline.store.request_slots import RequestSlots, SlotWaitTimeoutError


class CdsSlotTimeoutError(CdsUnavailableError):
    """No CDS request slot came free in time: the fleet is at its limit."""


class SlotLimitedSession(requests.Session):
    """A ``requests.Session`` whose every request holds one of ``slots`` meanwhile."""

    def __init__(self, slots: RequestSlots, max_wait_seconds: float) -> None:
        super().__init__()
        self.slots = slots
        self.max_wait_seconds = max_wait_seconds

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        try:
            with self.slots.slot(self.max_wait_seconds):
                return super().request(method, url, *args, **kwargs)
        except SlotWaitTimeoutError as error:
            raise CdsSlotTimeoutError(
                f"CDS XMatch at {url!s}: {error} (XMATCH_CDS_MAX_IN_FLIGHT={self.slots.limit})"
            ) from error
