"""The one error every undecodable alert raises, so callers can dead-letter it with a reason."""

from __future__ import annotations


class AlertDecodeError(ValueError):
    """Bytes that are not a readable ZTF alert.

    ``reason`` is a short sentence fit for a dead-letter header; ``topic``, ``partition``,
    ``offset`` (a Kafka message) or ``source`` (a file) say where the bytes came from.
    """

    def __init__(
        self,
        reason: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        source: str | None = None,
    ) -> None:
        self.reason = reason
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.source = source
        super().__init__(self._describe())

    def _describe(self) -> str:
        origin: list[str] = []
        if self.source is not None:
            origin.append(self.source)
        if self.topic is not None:
            origin.append(f"topic {self.topic}")
        if self.partition is not None:
            origin.append(f"partition {self.partition}")
        if self.offset is not None:
            origin.append(f"offset {self.offset}")
        where = f" ({', '.join(origin)})" if origin else ""
        return f"undecodable alert{where}: {self.reason}"

    def located(
        self,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        source: str | None = None,
    ) -> AlertDecodeError:
        """The same error with its origin filled in by a caller that knows more."""
        return AlertDecodeError(
            self.reason,
            topic=topic if topic is not None else self.topic,
            partition=partition if partition is not None else self.partition,
            offset=offset if offset is not None else self.offset,
            source=source if source is not None else self.source,
        )
