"""Publish a batch's output and commit its input offsets in one Kafka transaction.

Exactly once for ``read_committed`` consumers: either the output, the dead letters and the
consumer group's new offsets all become visible, or none does. The transactional id is
stable per input partition (:func:`transactional_id_for`), so a restarted run's
``init_transactions`` fences its dead predecessor and aborts whatever it left open.

Errors follow librdkafka's transactional contract: a retriable error retries the same
call a bounded number of times, all attempts of one step sharing that step's time budget
(librdkafka's own request timeout, ``socket.timeout.ms``, is set to the same budget: left
at its 60 s default it outlasted the step's timeout, and a commit against a stopped broker
blocked for three times 60 s); an error that requires abort aborts the transaction and
raises :class:`TransactionAbortedError` (the batch may simply run again); a fatal error
(fenced, or the producer unusable) raises :class:`ProducerFencedError` or
:class:`PublisherFatalError` and the publisher must be discarded.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from xmatch_pipeline.closing import ClosedOnExit
from xmatch_pipeline.kafka.client_config import KafkaClientConfig, KafkaOperationError
from xmatch_pipeline.kafka.errors import (
    AUTHORIZATION_CODES,
    SecurityErrorRecorder,
    authorization_failure,
)
from xmatch_pipeline.kafka.partition_id import PartitionId
from xmatch_pipeline.microbatch.offset_range import OffsetRange

logger = logging.getLogger(__name__)

Compression = Literal["zstd", "lz4", "gzip", "snappy", "none"]
Headers = Sequence[tuple[str, bytes]]

_T = TypeVar("_T")

# librdkafka's own fencing code, the broker's, and the older broker's epoch error.
_FENCED_CODES = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)
_UNSAFE_ID_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")
#: ``init_transactions`` is called in slices this long, so that refused credentials (which
#: librdkafka only reports to ``error_cb``, between calls) fail the run within seconds.
_INIT_SLICE_SECONDS = 2.0

#: The least time a call is given, so that a spent budget still makes one real attempt.
_MIN_CALL_SECONDS = 0.1


class TransactionalPublisherError(KafkaOperationError):
    """A transactional publish failed."""


class MessageTooLargeError(TransactionalPublisherError):
    """The producer refused one message as too large; nothing was queued for it."""


class TransactionAbortedError(TransactionalPublisherError):
    """The transaction was aborted: nothing of it is visible; run the batch again."""


class ProducerFencedError(TransactionalPublisherError):
    """A newer producer with the same transactional id took over; this one is dead."""


class PublisherFatalError(TransactionalPublisherError):
    """The producer cannot continue; discard it and start a new run."""


@dataclass(frozen=True)
class TransactionTimeouts:
    """How long each transactional step may block, all its retries included, and how often
    a retriable one retries.

    ``transaction_timeout_ms`` bounds how long the broker keeps a dead producer's
    transaction open (it then aborts it, unblocking ``read_committed`` readers).
    """

    init_seconds: float = 30.0
    operation_seconds: float = 30.0
    queue_full_seconds: float = 60.0
    transaction_timeout_ms: int = 60_000
    retry_attempts: int = 3
    retry_backoff_seconds: float = 0.5


BACKFILL_TRANSACTIONAL_ID_PREFIX = "xmatch-backfill-"


def live_transactional_id_prefix(group_id: str) -> str:
    """What every live transactional id of one group starts with (a prefixed ACL grants it)."""
    return _safe_id(f"xmatch-{group_id}-")


def transactional_id_for(group_id: str, topic: str, partition: int) -> str:
    """The transactional id of live runs over one input partition of one group."""
    return live_transactional_id_prefix(group_id) + _safe_id(f"{topic}-{partition}")


def backfill_transactional_id(offset_range: OffsetRange) -> str:
    """A backfill's own id per range: it never fences live runs, but fences its own rerun."""
    return BACKFILL_TRANSACTIONAL_ID_PREFIX + _safe_id(
        f"{offset_range.topic}-{offset_range.partition}-{offset_range.start}-{offset_range.end}"
    )


def _milliseconds(seconds: float) -> int:
    return max(int(seconds * 1000), 10)


def _safe_id(raw: str) -> str:
    return _UNSAFE_ID_CHARACTERS.sub("_", raw)


class TransactionalPublisher(ClosedOnExit):
    """One transactional producer; call :meth:`init` once, then one transaction at a time."""

    def __init__(
        self,
        client_config: KafkaClientConfig,
        transactional_id: str,
        timeouts: TransactionTimeouts | None = None,
        *,
        compression: Compression = "zstd",
        linger_ms: int = 20,
        max_message_bytes: int = 1_000_000,
        batch_bytes: int = 1_000_000,
    ) -> None:
        if not transactional_id:
            raise ValueError("transactional id must not be empty")
        self.transactional_id = transactional_id
        self.timeouts = timeouts or TransactionTimeouts()
        self._in_transaction = False
        self._initialized = False
        self._delivery_failures: list[str] = []
        self._refused_topics: list[str] = []
        self.produced_in_transaction = 0
        self._config = client_config
        self._security = SecurityErrorRecorder()
        self._producer = Producer(
            {
                "error_cb": self._security,
                **client_config.as_dict(
                    {
                        "client.id": "xmatch-publisher",
                        "transactional.id": transactional_id,
                        "enable.idempotence": True,
                        "acks": "all",
                        # Alerts are ~65 kB with gzipped cutouts; zstd still saves ~40 % on the
                        # rest (measured on the real alerts: zstd 60 %, lz4 66 % of the size).
                        "compression.type": compression,
                        "linger.ms": linger_ms,
                        # The broker limits whole batches: keep one within the topic's limit.
                        "batch.size": min(batch_bytes, max_message_bytes),
                        "message.max.bytes": max_message_bytes,
                        "transaction.timeout.ms": self.timeouts.transaction_timeout_ms,
                        "message.timeout.ms": self.timeouts.transaction_timeout_ms,
                        # No request may outlast the step that waits for it.
                        "socket.timeout.ms": _milliseconds(
                            min(self.timeouts.init_seconds, self.timeouts.operation_seconds)
                        ),
                    }
                ),
            }
        )

    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    def init(self) -> None:
        """Register the id: fences older producers with it and aborts what they left open."""
        self._retrying(
            "init_transactions",
            self._init_transactions,
            self.timeouts.init_seconds,
            abort_on_abortable=False,
        )
        self._initialized = True

    def _init_transactions(self, seconds: float) -> None:
        """``init_transactions`` within ``seconds``, called in slices: a timed-out call
        resumes where it stopped, and between slices a refused login ends the wait."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            try:
                self._producer.init_transactions(max(0.1, min(_INIT_SLICE_SECONDS, remaining)))
                return
            except KafkaException as exception:
                error: KafkaError = exception.args[0]
                timed_out = error.code() == KafkaError._TIMED_OUT and not error.fatal()
                if not timed_out or deadline - time.monotonic() <= 0:
                    raise
                self._raise_if_refused_login(exception)

    def begin(self) -> None:
        if not self._initialized:
            raise TransactionalPublisherError(
                f"{self.transactional_id}: call init() before begin()"
            )
        if self._in_transaction:
            raise TransactionalPublisherError(
                f"{self.transactional_id}: a transaction is already open; commit or abort it"
            )
        try:
            self._producer.begin_transaction()
        except KafkaException as exception:
            self._raise_if_refused(exception, exception.args[0], None)
            raise self._typed("begin_transaction", exception.args[0]) from exception
        self._in_transaction = True
        self._delivery_failures = []
        self._refused_topics = []
        self.produced_in_transaction = 0

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Queue one message in the open transaction, waiting while the queue is full.

        A message larger than the producer's ``message.max.bytes`` raises
        :class:`MessageTooLargeError` and leaves the transaction usable.
        """
        if not self._in_transaction:
            raise TransactionalPublisherError(
                f"{self.transactional_id}: produce outside a transaction; call begin() first"
            )
        deadline = time.monotonic() + self.timeouts.queue_full_seconds
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=list(headers) if headers else None,
                    on_delivery=self._on_delivery,
                )
                break
            except BufferError:
                if time.monotonic() > deadline:
                    raise TransactionalPublisherError(
                        f"{self.transactional_id}: the producer queue stayed full for "
                        f"{self.timeouts.queue_full_seconds:g} s while producing to {topic}; "
                        "check the broker"
                    ) from None
                self._producer.poll(0.1)  # deliveries free queue space
            except KafkaException as exception:
                error: KafkaError = exception.args[0]
                if error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                    self._refused_topics.append(topic)
                    self._raise_if_refused(exception, error, None)
                size = len(value) if value is not None else 0
                kind = (
                    MessageTooLargeError
                    if error.code() == KafkaError.MSG_SIZE_TOO_LARGE
                    else TransactionalPublisherError
                )
                raise kind(
                    f"{self.transactional_id}: cannot produce a {size}-byte message to "
                    f"{topic}: {error.name()} ({error.str()})"
                ) from exception
        self.produced_in_transaction += 1
        self._producer.poll(0)

    def flush(self) -> None:
        """Deliver what is queued now, still uncommitted (visible only once committed)."""
        remaining = self._producer.flush(self.timeouts.operation_seconds)
        if remaining:
            raise TransactionalPublisherError(
                f"{self.transactional_id}: {remaining} messages still undelivered after "
                f"{self.timeouts.operation_seconds:g} s{self._delivery_summary()}; check the broker"
            )

    def commit_with_offsets(
        self,
        next_offsets: Mapping[PartitionId, int],
        group_metadata: Any,
        group_id: str = "of the consumer",
    ) -> None:
        """Commit the transaction together with the group's next offsets per input partition.

        ``group_id`` (the group ``group_metadata`` belongs to) only names it in errors.
        """
        self._require_transaction("commit")
        offsets = [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in sorted(next_offsets.items())
        ]
        self._retrying(
            "send_offsets_to_transaction",
            lambda seconds: self._producer.send_offsets_to_transaction(
                offsets, group_metadata, seconds
            ),
            self.timeouts.operation_seconds,
            committing=(group_id, ", ".join(sorted({topic for topic, _ in next_offsets}))),
        )
        self._commit()

    def commit(self) -> None:
        """Commit without offsets: backfills re-produce output but leave the group alone."""
        self._require_transaction("commit")
        self._commit()

    def abort(self) -> None:
        """Abort the open transaction (nothing of it becomes visible); no-op if none."""
        if not self._in_transaction:
            return
        self._retrying(
            "abort_transaction",
            self._producer.abort_transaction,
            self.timeouts.operation_seconds,
            abort_on_abortable=False,
        )
        self._in_transaction = False

    @contextmanager
    def transaction(self) -> Iterator[TransactionalPublisher]:
        """Begin; abort if the block leaves without committing (an exception, a return)."""
        self.begin()
        try:
            yield self
        finally:
            if self._in_transaction:
                self._abort_quietly()

    def close(self) -> None:
        """Abort an open transaction, deliver what is queued, release the producer."""
        if self._in_transaction:
            self._abort_quietly()
        self._producer.flush(self.timeouts.operation_seconds)

    def _commit(self) -> None:
        self._retrying(
            "commit_transaction",
            self._producer.commit_transaction,
            self.timeouts.operation_seconds,
        )
        self._in_transaction = False

    def _require_transaction(self, what: str) -> None:
        if not self._in_transaction:
            raise TransactionalPublisherError(
                f"{self.transactional_id}: {what} without an open transaction"
            )

    def _retrying(
        self,
        what: str,
        call: Callable[[float], _T],
        budget_seconds: float,
        *,
        abort_on_abortable: bool = True,
        committing: tuple[str, str] | None = None,
    ) -> _T:
        """``call(timeout)``, retried while retriable, every attempt within one budget.

        ``committing`` is ``(group, topics)`` when the call commits offsets: what a refused
        READ is named after."""
        attempts = self.timeouts.retry_attempts
        started = time.monotonic()
        deadline = started + budget_seconds
        for attempt in range(1, attempts + 1):
            try:
                return call(max(deadline - time.monotonic(), _MIN_CALL_SECONDS))
            except KafkaException as exception:
                error: KafkaError = exception.args[0]
                self._raise_if_refused(exception, error, committing)
                backoff = self.timeouts.retry_backoff_seconds * 2 ** (attempt - 1)
                time_left = deadline - time.monotonic() - backoff > _MIN_CALL_SECONDS
                if error.retriable() and not error.fatal() and attempt < attempts and time_left:
                    logger.warning(
                        "%s %s: %s (attempt %d of %d), retrying",
                        self.transactional_id,
                        what,
                        error.str(),
                        attempt,
                        attempts,
                    )
                    time.sleep(backoff)
                    continue
                if abort_on_abortable and error.txn_requires_abort():
                    self._abort_quietly()
                    raise TransactionAbortedError(
                        f"{self.transactional_id}: {what} failed ({error.name()}: "
                        f"{error.str()}){self._delivery_summary()}; the transaction was "
                        "aborted, nothing of it is visible: run the batch again"
                    ) from exception
                spent = (
                    f"{attempt} attempt{'s' if attempt > 1 else ''} in "
                    f"{time.monotonic() - started:.1f} s (budget {budget_seconds:g} s)"
                )
                raise self._typed(what, error, spent) from exception
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_if_refused_login(self, exception: KafkaException) -> None:
        with suppress(KafkaException):  # a fatal error is raised again by poll: the cause is known
            self._producer.poll(0)  # serves error_cb, where librdkafka reports a refused login
        failure = self._security.failure(self._config)
        if failure is not None:
            self._in_transaction = False
            raise failure from exception

    def _raise_if_refused(
        self, exception: KafkaException, error: KafkaError, committing: tuple[str, str] | None
    ) -> None:
        """Raise the security error behind a failed call: a refused login or a missing ACL."""
        self._raise_if_refused_login(exception)
        code = error.code()
        if self._refused_topics:  # the commit then fails "inconsistent", the deliveries say why
            code = KafkaError.TOPIC_AUTHORIZATION_FAILED
            committing = None
        if code not in AUTHORIZATION_CODES:
            return
        group, input_topics = committing or ("of the consumer", "the input topics")
        if code == KafkaError.TOPIC_AUTHORIZATION_FAILED and committing is not None:
            # Kafka checks READ on the topics whose offsets a transaction commits.
            operation, resource, name = "READ", "topic", input_topics
        elif code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            topics = ", ".join(sorted(set(self._refused_topics))) or "the topics written"
            operation, resource, name = "WRITE", "topic", topics
        elif code == KafkaError.GROUP_AUTHORIZATION_FAILED:
            operation, resource, name = "READ", "group", group
        elif code == KafkaError.CLUSTER_AUTHORIZATION_FAILED:
            operation, resource, name = "IDEMPOTENT_WRITE", "cluster", "kafka-cluster"
        else:
            operation, resource, name = "WRITE", "transactional_id", self.transactional_id
        if self._in_transaction:
            self._abort_quietly()
        raise authorization_failure(
            self._config, error, operation=operation, resource=resource, name=name
        ) from exception

    def _typed(
        self, what: str, error: KafkaError, spent: str = "one attempt"
    ) -> TransactionalPublisherError:
        detail = f"{self.transactional_id}: {what} failed: {error.name()} ({error.str()})"
        if error.code() in _FENCED_CODES:
            self._in_transaction = False
            return ProducerFencedError(
                f"{detail}; a newer producer with this transactional id took over (another "
                "run of the same partition?): this run's transaction will never be visible"
            )
        if error.fatal():
            self._in_transaction = False
            return PublisherFatalError(f"{detail}; the producer is unusable: start a new run")
        if error.retriable():
            return TransactionalPublisherError(
                f"{detail} after {spent}; check the broker and run the batch again"
            )
        return TransactionalPublisherError(detail)

    def _abort_quietly(self) -> None:
        """Abort on a failure path; a second failure is logged, not raised over the first."""
        try:
            self._producer.abort_transaction(self.timeouts.operation_seconds)
        except KafkaException as exception:
            logger.warning(
                "%s: abort_transaction failed (%s); the broker aborts the transaction after "
                "transaction.timeout.ms or when the next run calls init_transactions",
                self.transactional_id,
                exception.args[0].str(),
            )
        self._in_transaction = False

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            self._refused_topics.append(str(message.topic()))
        if error is not None and len(self._delivery_failures) < 5:
            self._delivery_failures.append(
                f"{message.topic()}[{message.partition()}]: {error.name()} ({error.str()})"
            )

    def _delivery_summary(self) -> str:
        if not self._delivery_failures:
            return ""
        return "; failed deliveries: " + "; ".join(self._delivery_failures)
