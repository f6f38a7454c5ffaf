"""Produce alert packets from files to a Kafka topic, bytes unchanged, key ``objectId``.

Every alert is decoded first so that corrupt inputs are skipped with a reason rather than
sent on; the producer is idempotent and each input (file, candid) goes out at most once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from xmatch_pipeline.decode import AlertDecodeError, decode_alert
from xmatch_pipeline.read.alert_files import (
    AlertFileError,
    expand_alert_paths,
    read_alert_file,
)

CONNECT_TIMEOUT_SECONDS = 5.0
FLUSH_TIMEOUT_SECONDS = 120.0
DELIVERY_TIMEOUT_MS = 60_000


class BrokerUnreachableError(ConnectionError):
    """The Kafka broker did not answer; the message names the address and what to do."""


@dataclass(frozen=True, slots=True)
class SkippedAlert:
    """An input that was not produced, and why."""

    source: str
    reason: str


@dataclass
class ReplayReport:
    """What a replay did: confirmed deliveries, inputs skipped, deliveries that failed."""

    topic: str
    bootstrap: str
    delivered: int = 0
    skipped: list[SkippedAlert] = field(default_factory=list)
    failed: list[SkippedAlert] = field(default_factory=list)
    topic_created: bool = False


def _client_config(bootstrap: str, timeout_seconds: float) -> dict[str, str | int | float | bool]:
    return {
        "bootstrap.servers": bootstrap,
        "socket.timeout.ms": max(int(timeout_seconds * 1000), 10),
        "socket.connection.setup.timeout.ms": max(int(timeout_seconds * 1000), 1000),
    }


def _ensure_topic(bootstrap: str, topic: str, partitions: int, timeout_seconds: float) -> bool:
    """Check the broker answers; create ``topic`` if it is missing. True when created."""
    # Quiet librdkafka's own connection log: an unreachable broker is reported once, below.
    admin = AdminClient({**_client_config(bootstrap, timeout_seconds), "log_level": 2})
    try:
        metadata = admin.list_topics(timeout=timeout_seconds)
    except KafkaException as error:
        raise BrokerUnreachableError(
            f"Kafka broker at {bootstrap} did not answer within {timeout_seconds:g} s "
            f"({error.args[0] if error.args else error}). Start the devstack "
            "('xmatch-pipeline devstack up') or pass --bootstrap HOST:PORT."
        ) from error
    if topic in metadata.topics and metadata.topics[topic].error is None:
        return False
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions)])
    try:
        futures[topic].result(timeout=timeout_seconds * 3)
    except KafkaException as error:
        if error.args and error.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise BrokerUnreachableError(
            f"could not create topic {topic!r} on {bootstrap}: {error}"
        ) from error
    return True


class _Deliveries:
    """Tracks confirmations so that a flush timeout reports exactly what is unconfirmed."""

    def __init__(self, report: ReplayReport, on_delivered: Callable[[], None] | None) -> None:
        self.report = report
        self.pending: dict[int, str] = {}
        self.on_delivered = on_delivered
        self._next_id = 0

    def callback_for(self, source: str) -> Callable[[KafkaError | None, Message], None]:
        message_id = self._next_id
        self._next_id += 1
        self.pending[message_id] = source

        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            self.pending.pop(message_id, None)
            if error is not None:
                self.report.failed.append(SkippedAlert(source, f"delivery failed: {error}"))
                return
            self.report.delivered += 1
            if self.on_delivered is not None:
                self.on_delivered()

        return on_delivery


def count_alert_inputs(paths: Sequence[Path | str]) -> int | None:
    """How many alerts ``paths`` hold, when known without reading archives (for progress)."""
    files = expand_alert_paths(paths)
    if any(not path.name.endswith(".avro") for path in files):
        return None
    return len({path.resolve() for path in files})


def replay_alerts(
    paths: Iterable[Path | str],
    topic: str,
    bootstrap: str,
    *,
    partitions: int = 1,
    on_connected: Callable[[], None] | None = None,
    on_delivered: Callable[[], None] | None = None,
    flush_timeout_seconds: float = FLUSH_TIMEOUT_SECONDS,
    connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
) -> ReplayReport:
    """Produce every alert under ``paths`` to ``topic``; raises only when nothing can start.

    Missing paths raise AlertFileError and an unreachable broker BrokerUnreachableError,
    both before anything is produced. Corrupt files, truncated archives and undecodable
    alerts are skipped and listed in the report; so are repeats of a file or a candid.
    ``on_connected`` is called once the broker has answered, ``on_delivered`` per alert.
    """
    files = expand_alert_paths(paths)
    report = ReplayReport(topic=topic, bootstrap=bootstrap)
    report.topic_created = _ensure_topic(bootstrap, topic, partitions, connect_timeout_seconds)
    if on_connected is not None:
        on_connected()
    producer = Producer(
        {
            **_client_config(bootstrap, connect_timeout_seconds),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "message.timeout.ms": DELIVERY_TIMEOUT_MS,
        }
    )
    deliveries = _Deliveries(report, on_delivered)
    seen_files: set[Path] = set()
    produced_candids: dict[int, str] = {}
    for path in files:
        resolved = path.resolve()
        if resolved in seen_files:
            report.skipped.append(SkippedAlert(str(path), "listed more than once"))
            continue
        seen_files.add(resolved)
        try:
            for packet in read_alert_file(path):
                try:
                    alert = decode_alert(packet.data, source=packet.source)
                except AlertDecodeError as error:
                    report.skipped.append(SkippedAlert(packet.source, error.reason))
                    continue
                earlier = produced_candids.get(alert.candid)
                if earlier is not None:
                    report.skipped.append(
                        SkippedAlert(
                            packet.source, f"candid {alert.candid} already sent from {earlier}"
                        )
                    )
                    continue
                produced_candids[alert.candid] = packet.source
                _produce(
                    producer,
                    topic,
                    packet.data,
                    alert.object_id,
                    deliveries.callback_for(packet.source),
                )
        except AlertFileError as error:
            report.skipped.append(SkippedAlert(error.path, error.reason))
    producer.flush(flush_timeout_seconds)
    for source in deliveries.pending.values():
        report.failed.append(
            SkippedAlert(source, f"delivery not confirmed within {flush_timeout_seconds:.0f} s")
        )
    deliveries.pending.clear()
    return report


def _produce(
    producer: Producer,
    topic: str,
    value: bytes,
    key: str,
    on_delivery: Callable[[KafkaError | None, Message], None],
) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key.encode("utf-8"), on_delivery=on_delivery)
        except BufferError:
            producer.poll(0.5)  # local queue full: wait for deliveries, then try again
            continue
        producer.poll(0)
        return
