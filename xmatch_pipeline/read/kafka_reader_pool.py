"""Range readers kept between the runs of one process, so a warm worker skips the consumer's
start (client threads, bootstrap connection, metadata) on every run.

A reader is safe to reuse: it never joins its group, never commits, and unassigns its
partition when a read ends, which drops whatever it had prefetched. Only a reader whose
run ended cleanly goes back to the pool; after a failure it is closed and the next run
starts a new one, so no error state of one run reaches the next. Readers are lent one run
at a time (a consumer is not shared between threads). librdkafka clients must never cross
a fork: the process-level cache that owns a pool drops it in a forked child
(``warm_services``).
"""

from __future__ import annotations

import threading

from xmatch_pipeline.kafka.client_config import KafkaClientConfig
from xmatch_pipeline.read.kafka_range_reader import KafkaRangeReader


class KafkaReaderPool:
    """Idle range readers per consumer group; ``keep_idle=False`` closes each after its run."""

    def __init__(
        self,
        client_config: KafkaClientConfig,
        *,
        stall_timeout_seconds: float = 60.0,
        keep_idle: bool = True,
    ) -> None:
        self._client_config = client_config
        self._stall_timeout = stall_timeout_seconds
        self._keep_idle = keep_idle
        self._idle: dict[str, list[KafkaRangeReader]] = {}
        self._lock = threading.Lock()
        #: Readers created so far (tests and benchmarks check reuse with it).
        self.created = 0

    def take(self, group_id: str) -> KafkaRangeReader:
        """An idle reader of the group, or a new one; give it back with :meth:`release`."""
        with self._lock:
            idle = self._idle.get(group_id)
            if idle:
                return idle.pop()
            self.created += 1
        return KafkaRangeReader(
            self._client_config, group_id, stall_timeout_seconds=self._stall_timeout
        )

    def release(self, reader: KafkaRangeReader, *, reusable: bool) -> None:
        """Keep the reader for the next run if its run ended cleanly; close it otherwise."""
        if reusable and self._keep_idle:
            with self._lock:
                self._idle.setdefault(reader.group_id, []).append(reader)
            return
        reader.close()

    def idle_count(self) -> int:
        with self._lock:
            return sum(len(readers) for readers in self._idle.values())

    def close(self) -> None:
        with self._lock:
            readers = [reader for idle in self._idle.values() for reader in idle]
            self._idle.clear()
        for reader in readers:
            reader.close()
