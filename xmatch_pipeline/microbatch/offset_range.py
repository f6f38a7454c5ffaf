"""The unit of work of the whole pipeline: a half-open range of offsets in one partition."""

from __future__ import annotations

from dataclasses import dataclass

from xmatch_pipeline.kafka.partition_id import PartitionId


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
    def partition_id(self) -> PartitionId:
        """The topic partition the range is in."""
        return (self.topic, self.partition)

    @property
    def size(self) -> int:
        """How many offsets the range spans (messages may be fewer: offsets can have gaps)."""
        return self.end - self.start

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@[{self.start},{self.end})"

    def split(self, size: int) -> list[OffsetRange]:
        """Consecutive ranges of at most ``size`` offsets covering this one."""
        if size < 1:
            raise ValueError(f"offset range {self}: split size must be >= 1, got {size}")
        return [
            OffsetRange(self.topic, self.partition, start, min(start + size, self.end))
            for start in range(self.start, self.end, size)
        ]

    @property
    def key(self) -> str:
        """The range as one word, ``topic/partition/start-end``: its Dagster partition key.

        ``/`` cannot occur in a Kafka topic name (only ``[a-zA-Z0-9._-]``), so the key
        reads back unambiguously (:meth:`from_key`).
        """
        return f"{self.topic}/{self.partition}/{self.start}-{self.end}"

    @classmethod
    def from_key(cls, key: str) -> OffsetRange:
        """The range a :attr:`key` names; ValueError, saying what was expected, otherwise."""
        parts = key.split("/")
        bounds = parts[2].split("-") if len(parts) == 3 else []
        if len(bounds) != 2 or not all(p.isdigit() for p in [parts[1], *bounds]):
            raise ValueError(
                f"offset range key {key!r}: expected topic/partition/start-end, "
                "e.g. ztf_20200101_programid1/0/0-5000"
            )
        return cls(parts[0], int(parts[1]), int(bounds[0]), int(bounds[1]))
