"""Faults the server can inject, one per request from a queue, to test clients' recovery.

Each kind reproduces a failure seen from the real CDS service (brief §2). A fault applies
to ``times`` successive sync requests (``None``: for ever), then the next one in the queue
does, then requests are served normally, so "fail twice then succeed" is one queue entry.
"""

from __future__ import annotations

import csv
import io
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from threading import Lock
from typing import Any

#: How much of the answer a ``slow_body`` fault sends at a time.
SLOW_BODY_PIECE_BYTES = 64

#: Every fault kind: what the client sees.
FAULT_KINDS: dict[str, str] = {
    "delay": "the answer comes after `seconds` (longer than a read timeout: a timeout)",
    "500": "HTTP 500 Internal Server Error",
    "503": "HTTP 503 Service Unavailable",
    "504": "HTTP 504 Gateway Time-out",
    "html200": "HTTP 200 whose body is an HTML '504 Gateway Time-out' page",
    "403": "HTTP 403: the address is banned",
    "400": "HTTP 400 with a VOTable QUERY_STATUS=ERROR `message`",
    "too_many_jobs": "HTTP 200 'Too many jobs are being processed, try later!'",
    "truncated": "HTTP 200 with the CSV answer cut mid-row (Content-Length of the cut body)",
    "cut_connection": "HTTP 200 promising the whole CSV; the connection closes halfway",
    "drop": "the connection closes before any answer",
    "slow_body": (
        f"HTTP 200 whose CSV answer comes {SLOW_BODY_PIECE_BYTES} bytes at a time, `seconds` "
        "apart (every read is quick, the whole answer is not)"
    ),
    "far_row": "HTTP 200 whose first row claims a match 1 arcsec beyond the radius asked for",
    "unknown_id": "HTTP 200 whose first row is for an id never uploaded",
    "duplicate_row": "HTTP 200 whose first row comes twice (two 'best' rows for one id)",
}
#: Faults that answer a well-formed table with wrong rows (see ``corrupted_answer``).
ANSWER_CORRUPTIONS = frozenset({"far_row", "unknown_id", "duplicate_row"})
NEVER_SENT_ID = "never-sent"

DEFAULT_REJECTION = "Column 'unknown' not found in table"


@dataclass(frozen=True)
class Fault:
    """One fault kind, for ``times`` requests (None: every request)."""

    kind: str
    times: int | None = 1
    seconds: float = 0.0
    message: str = DEFAULT_REJECTION

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(
                f"unknown fault kind {self.kind!r}; choose one of {', '.join(FAULT_KINDS)}"
            )
        if self.times is not None and self.times < 1:
            raise ValueError(f"fault {self.kind}: times must be at least 1, got {self.times}")
        if self.seconds < 0:
            raise ValueError(f"fault {self.kind}: seconds must not be negative")

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Fault:
        """From ``{"kind": "500", "times": 2}`` (``times`` null: for ever)."""
        unknown = set(document) - {"kind", "times", "seconds", "message"}
        if unknown:
            raise ValueError(f"unknown fault fields {sorted(unknown)}")
        times = document.get("times", 1)
        return cls(
            kind=str(document["kind"]),
            times=None if times is None else int(times),
            seconds=float(document.get("seconds", 0.0)),
            message=str(document.get("message", DEFAULT_REJECTION)),
        )

    @classmethod
    def from_text(cls, text: str) -> Fault:
        """From the command line: ``KIND[:TIMES[:SECONDS]]``, TIMES ``*`` for ever.

        E.g. ``500:2`` (two 500s), ``delay:1:2.5`` (one answer 2.5 s late), ``403:*``.
        """
        kind, _, rest = text.partition(":")
        times_text, _, seconds_text = rest.partition(":")
        times = None if times_text == "*" else int(times_text or 1)
        return cls(kind=kind, times=times, seconds=float(seconds_text or 0.0))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class FaultQueue:
    """The faults still to apply, shared by the server's request threads."""

    def __init__(self, faults: Iterable[Fault] = ()) -> None:
        self._lock = Lock()
        self._queue: deque[tuple[Fault, int | None]] = deque(
            (fault, fault.times) for fault in faults
        )

    def replace(self, faults: Iterable[Fault]) -> None:
        with self._lock:
            self._queue = deque((fault, fault.times) for fault in faults)

    def take(self) -> Fault | None:
        """The fault for the next request, if any, counting it as used."""
        with self._lock:
            if not self._queue:
                return None
            fault, left = self._queue[0]
            if left is not None:
                if left <= 1:
                    self._queue.popleft()
                else:
                    self._queue[0] = (fault, left - 1)
            return fault

    def pending(self) -> list[dict[str, Any]]:
        """The faults still queued, ``times`` being what is left of each."""
        with self._lock:
            return [{**fault.to_json(), "times": left} for fault, left in self._queue]


def corrupted_answer(kind: str, answer: bytes, radius_arcsec: float) -> bytes:
    """A CSV answer with its first row made wrong as ``kind`` (one of ``ANSWER_CORRUPTIONS``)
    says; an answer without rows is returned as it is."""
    if kind not in ANSWER_CORRUPTIONS:
        raise ValueError(f"{kind!r} is not an answer corruption ({sorted(ANSWER_CORRUPTIONS)})")
    header, *records = list(csv.reader(io.StringIO(answer.decode("utf-8"))))
    if not records:
        return answer
    first = list(records[0])
    if kind == "far_row":
        first[header.index("angDist")] = repr(radius_arcsec + 1.0)
        records[0] = first
    elif kind == "unknown_id":
        first[header.index("id_in")] = NEVER_SENT_ID
        records[0] = first
    else:
        records.insert(1, first)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(records)
    return buffer.getvalue().encode("utf-8")
