"""The unit of work of the whole pipeline: a half-open range of offsets in one partition."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class OffsetRange:
    """Offsets ``[start, end)`` of one topic partition.

    Ranges are half-open so that consecutive runs chain without overlap: a run over
    ``[start, end)`` commits ``end`` as the consumer group's next offset.
    """

    topic: str
    partition: int
    start: int
    end: int

    def __post_init__(self) -> None:
        if not self.topic:
            raise ValueError("offset range: topic must not be empty")
        if self.partition < 0:
            raise ValueError(f"offset range: partition must be >= 0, got {self.partition}")
        if not 0 <= self.start < self.end:
            raise ValueError(
                f"offset range {self.topic}[{self.partition}]: need 0 <= start < end, "
                f"got start={self.start} end={self.end}"
            )

    @property
    def size(self) -> int:
        """How many offsets the range spans (messages may be fewer: offsets can have gaps)."""
        return self.end - self.start

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@[{self.start},{self.end})"
