"""The sensor's read-only view of Kafka: partitions, committed offsets and watermarks.

It uses only metadata, ListOffsets and OffsetFetch requests (the last through a consumer
handle that never subscribes): it never consumes a message and never joins the group, so
a sensor tick cannot disturb a run. Every call of one :meth:`KafkaOffsetsReader.lags`
shares one deadline of ``timeout_seconds``, so an unreachable broker fails the tick within
seconds instead of stalling the daemon.

A partition the group has never committed (librdkafka reports offset -1001) starts at its
low watermark, the earliest offset still kept: the original step also began new groups at
the beginning (``auto.offset.reset: beginning``). High watermarks are read with the
``read_committed`` isolation level, i.e. they are last stable offsets: a range never
reaches into an upstream transaction that is still open.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    OffsetSpec,
)

from xmatch_pipeline.kafka.client_config import KafkaClientConfig, KafkaOperationError
from xmatch_pipeline.kafka.errors import (
    AUTHORIZATION_CODES,
    SecurityErrorRecorder,
    authorization_failure,
)
from xmatch_pipeline.kafka.partition_id import PartitionId

logger = logging.getLogger(__name__)


_T = TypeVar("_T")

_RETRIABLE_CODES = frozenset(
    {
        KafkaError._TIMED_OUT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.UNSTABLE_OFFSET_COMMIT,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
    }
)


#: What a metadata request fails with while no broker could be reached (yet).
_UNREACHED_CODES = frozenset(
    {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT}
)


class KafkaUnavailableError(KafkaOperationError):
    """The cluster did not answer in time, or answered with an error."""


class TopicNotFoundError(KafkaOperationError):
    """An input topic does not exist on the cluster."""


@dataclass(frozen=True)
class PartitionLag:
    """Where the consumer group stands on one partition.

    ``committed`` is the group's next offset to process, or the low watermark when the
    group has none yet (``group_has_offset`` False). A committed offset below the low
    watermark means retention deleted messages the group never processed: the range
    reader refuses such a range, so the loss is never silent.
    """

    topic: str
    partition: int
    committed: int
    low: int
    high: int
    group_has_offset: bool

    @property
    def lag(self) -> int:
        """Messages (offsets) waiting to be processed."""
        return max(0, self.high - self.committed)

    @property
    def offsets_deleted_unprocessed(self) -> int:
        """Offsets retention deleted before the group processed them (0 normally)."""
        return max(0, self.low - self.committed)


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())


class KafkaOffsetsReader:
    """Offsets, watermarks and lag of one consumer group, never consuming a message."""

    def __init__(
        self,
        client_config: KafkaClientConfig,
        group_id: str,
        timeout_seconds: float = 5.0,
    ) -> None:
        if not group_id:
            raise ValueError("consumer group id must not be empty")
        if timeout_seconds <= 0:
            raise ValueError(f"timeout must be positive, got {timeout_seconds}")
        self.group_id = group_id
        self.timeout_seconds = timeout_seconds
        self._bootstrap = client_config.bootstrap_servers
        self._config = client_config
        self._security = SecurityErrorRecorder()
        timeout_ms = max(1000, int(timeout_seconds * 1000))
        client_settings: dict[str, object] = {
            "error_cb": self._security,
            **client_config.as_dict(
                {
                    "client.id": "xmatch-offsets-reader",
                    "socket.timeout.ms": timeout_ms,
                    "socket.connection.setup.timeout.ms": timeout_ms,
                }
            ),
        }
        # The stub types values as plain settings; librdkafka takes the error_cb callable too.
        self._admin = AdminClient(client_settings)  # type: ignore[arg-type]
        # Committed offsets are fetched by a consumer handle (see committed_offsets), which
        # hears refused logins through the same error_cb. It is made on first use and kept:
        # it holds no state of its own (it never subscribes), and a new one per call cost
        # every run a connection and a coordinator lookup.
        self._offset_fetcher: Consumer | None = None
        self._fetcher_lock = threading.Lock()
        self._offset_fetch_config: dict[str, object] = {
            "error_cb": self._security,
            **client_config.as_dict(
                {
                    "client.id": "xmatch-offsets-reader",
                    "group.id": group_id,
                    "enable.auto.commit": False,
                    # Committed offsets as a transactional commit leaves them (require_stable).
                    "isolation.level": "read_committed",
                    "socket.timeout.ms": timeout_ms,
                    "socket.connection.setup.timeout.ms": timeout_ms,
                }
            ),
        }

    @property
    def admin(self) -> AdminClient:
        """The reader's admin client, for other metadata questions (no state of a run)."""
        return self._admin

    def close(self) -> None:
        """Close the kept offset-fetching handle (the admin client needs no closing)."""
        with self._fetcher_lock:
            fetcher, self._offset_fetcher = self._offset_fetcher, None
        if fetcher is not None:
            fetcher.close()

    def list_topics(self, deadline: _Deadline | None = None) -> dict[str, int]:
        """Every non-internal topic with its number of partitions."""
        deadline = deadline or _Deadline(self.timeout_seconds)
        metadata = self._call("list topics", lambda: self._metadata(deadline), deadline)
        return {
            name: len(topic.partitions)
            for name, topic in metadata.topics.items()
            if not name.startswith("__") and topic.error is None
        }

    def _metadata(self, deadline: _Deadline) -> Any:
        """The cluster's metadata, asked for in slices of a second: a refused login (which
        librdkafka only reports to ``error_cb``) ends the wait early with its own error."""
        while True:
            try:
                return self._admin.list_topics(timeout=min(1.0, _at_least(deadline)))
            except KafkaException as exception:
                error: KafkaError = exception.args[0]
                if error.code() not in _UNREACHED_CODES or deadline.remaining() <= 0.1:
                    raise
                self._raise_if_refused(exception, error, None)

    def partitions(
        self, topics: Iterable[str], deadline: _Deadline | None = None
    ) -> list[PartitionId]:
        """All partitions of the topics, sorted; a missing topic is an error."""
        existing = self.list_topics(deadline)
        wanted = sorted(set(topics))
        missing = [topic for topic in wanted if topic not in existing]
        if missing:
            hidden = ""
            if self._config.username is not None:
                hidden = (
                    f" (or User:{self._config.username} lacks DESCRIBE on them: the broker "
                    "hides topics a user may not describe)"
                )
            raise TopicNotFoundError(
                f"topics {missing} do not exist on {self._bootstrap}{hidden}; check the input "
                "topic settings (CONSUMER_TOPICS, TOPIC_STRATEGY_FORMAT or XMATCH_TOPIC_PATTERN)"
            )
        return [(topic, partition) for topic in wanted for partition in range(existing[topic])]

    def committed_offsets(
        self, partitions: Sequence[PartitionId], deadline: _Deadline | None = None
    ) -> dict[PartitionId, int | None]:
        """The group's committed next offsets; ``None`` where it has none."""
        if not partitions:
            return {}
        deadline = deadline or _Deadline(self.timeout_seconds)
        wanted = [TopicPartition(topic, partition) for topic, partition in partitions]

        def fetch() -> list[TopicPartition]:
            # A consumer handle that never subscribes (so never joins the group) and asks
            # the group's coordinator itself. The admin client's ListConsumerGroupOffsets
            # crashed the process (librdkafka 2.16, rd_kafka_cgrp_op on a handle without a
            # group) when the coordinator answered "load in progress" after a restart.
            with self._fetcher_lock:
                if self._offset_fetcher is None:
                    self._offset_fetcher = Consumer(self._offset_fetch_config)
                answer: list[TopicPartition] = self._offset_fetcher.committed(
                    wanted, timeout=_at_least(deadline)
                )
            for entry in answer:
                # Just after a transaction commits offsets the broker answers "unstable" per
                # partition until its markers land: retry it like a request-level error.
                if entry.error is not None and entry.error.code() in _RETRIABLE_CODES:
                    raise KafkaException(entry.error)
            return answer

        answer = self._call(
            f"committed offsets of group {self.group_id!r}",
            fetch,
            deadline,
            needs=("group", self.group_id),
        )
        offsets: dict[PartitionId, int | None] = {}
        for entry in answer:
            if entry.error is not None:
                if entry.error.code() in AUTHORIZATION_CODES:
                    raise authorization_failure(
                        self._config,
                        entry.error,
                        operation="DESCRIBE",
                        resource="topic",
                        name=str(entry.topic),
                    )
                raise KafkaUnavailableError(
                    f"committed offset of group {self.group_id!r} on "
                    f"{entry.topic}[{entry.partition}]: {entry.error.str()}"
                )
            offsets[(entry.topic, entry.partition)] = entry.offset if entry.offset >= 0 else None
        return offsets

    def watermarks(
        self, partitions: Sequence[PartitionId], deadline: _Deadline | None = None
    ) -> dict[PartitionId, tuple[int, int]]:
        """``(low, high)`` per partition; high is the last stable offset."""
        if not partitions:
            return {}
        deadline = deadline or _Deadline(self.timeout_seconds)
        earliest = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        lows = self._list_offsets(partitions, earliest, "low watermarks", deadline)
        highs = self._list_offsets(partitions, latest, "high watermarks", deadline)
        return {key: (lows[key], highs[key]) for key in partitions}

    def lags(self, topics: Iterable[str]) -> list[PartitionLag]:
        """The group's position and lag on every partition of the topics."""
        deadline = _Deadline(self.timeout_seconds)
        partitions = self.partitions(topics, deadline)
        committed = self.committed_offsets(partitions, deadline)
        marks = self.watermarks(partitions, deadline)
        lags = []
        for key in partitions:
            low, high = marks[key]
            group_offset = committed.get(key)
            lags.append(
                PartitionLag(
                    topic=key[0],
                    partition=key[1],
                    committed=group_offset if group_offset is not None else low,
                    low=low,
                    high=high,
                    group_has_offset=group_offset is not None,
                )
            )
        return lags

    def _list_offsets(
        self,
        partitions: Sequence[PartitionId],
        spec: OffsetSpec,
        what: str,
        deadline: _Deadline,
    ) -> dict[PartitionId, int]:
        def fetch() -> dict[PartitionId, int]:
            futures = self._admin.list_offsets(
                {TopicPartition(topic, partition): spec for topic, partition in partitions},
                isolation_level=IsolationLevel.READ_COMMITTED,
                request_timeout=_at_least(deadline),
            )
            return {
                (key.topic, key.partition): int(_result(future, deadline).offset)
                for key, future in futures.items()
            }

        topics = ", ".join(sorted({topic for topic, _ in partitions}))
        return self._call(what, fetch, deadline, needs=("topic", topics))

    def _call(
        self,
        what: str,
        call: Callable[[], _T],
        deadline: _Deadline,
        needs: tuple[str, str] | None = None,
    ) -> _T:
        """``needs`` (resource kind, name) is what a refused DESCRIBE is named after."""
        """Run one admin request, retrying retriable errors while the deadline allows."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return call()
            except KafkaException as exception:
                error: KafkaError = exception.args[0]
                self._raise_if_refused(exception, error, needs)
                retriable = error.retriable() or error.code() in _RETRIABLE_CODES
                backoff = 0.2 * 2 ** (attempt - 1)
                if retriable and deadline.remaining() > backoff + 0.5:
                    logger.warning("%s: %s (attempt %d), retrying", what, error.str(), attempt)
                    time.sleep(backoff)
                    continue
                raise KafkaUnavailableError(
                    f"{what} from {self._bootstrap} failed: {error.name()} ({error.str()}); "
                    f"check that the broker is reachable and the credentials are right "
                    f"(timeout {self.timeout_seconds:g} s)"
                ) from exception
            except FutureTimeoutError as exception:
                self._serve_callbacks()
                refused_login = self._security.failure(self._config)
                if refused_login is not None:
                    raise refused_login from exception
                raise KafkaUnavailableError(
                    f"{what} from {self._bootstrap}: no answer within "
                    f"{self.timeout_seconds:g} s; check that the broker is reachable"
                ) from exception

    def _serve_callbacks(self) -> None:
        """Let ``error_cb`` hear what librdkafka queued (a refused login, say)."""
        with suppress(KafkaException):
            self._admin.poll(0)

    def _raise_if_refused(
        self, exception: KafkaException, error: KafkaError, needs: tuple[str, str] | None
    ) -> None:
        """A refused login (reported to error_cb, served by a poll) or a missing ACL."""
        self._serve_callbacks()
        refused_login = self._security.failure(self._config)
        if refused_login is not None:
            raise refused_login from exception
        if error.code() in AUTHORIZATION_CODES:
            resource, name = needs or ("topic", "the input topics")
            raise authorization_failure(
                self._config, error, operation="DESCRIBE", resource=resource, name=name
            ) from exception


def _at_least(deadline: _Deadline) -> float:
    """librdkafka rejects a zero timeout as 'infinite' in places: keep a small floor."""
    return max(0.1, deadline.remaining())


def _result(future: Future[_T], deadline: _Deadline) -> _T:
    return future.result(timeout=_at_least(deadline) + 1.0)
