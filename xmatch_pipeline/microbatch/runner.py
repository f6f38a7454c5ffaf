"""One micro-batch, exactly once: read → decode → match → store → publish + commit.

The order of the two commits is what makes every crash converge on a rerun:

1. the range is read and decoded in chunks (memory stays bounded by the chunk, not the
   range), each chunk crossmatched and its enriched alerts produced into an open Kafka
   transaction (invisible to ``read_committed`` readers until the commit);
2. the database rows (idempotent upserts) and the ledger entry commit in one PostgreSQL
   transaction;
3. the Kafka transaction commits the output together with the input offsets.

A crash before 2 leaves nothing; between 2 and 3 leaves rows that a rerun rewrites to the
same values, while the open Kafka transaction is aborted when the rerun's producer (same
transactional id per input partition) fences it. The partition is held by a PostgreSQL
advisory lock for the whole run, so two runs never work on one partition at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from xmatch_pipeline.decode.lsst_alert import LsstAlert
from xmatch_pipeline.decode.lsst_schemas import LsstSchemaSource
from xmatch_pipeline.kafka.client_config import KafkaClientConfig, KafkaOperationError
from xmatch_pipeline.match.alert_matching import BatchMatches, StoredMatches, crossmatch_alerts
from xmatch_pipeline.match.catalog_rows import catalog_table_rows, xmatch_rows
from xmatch_pipeline.match.crossmatch_engine import CrossmatchEngine
from xmatch_pipeline.microbatch.bad_input import ScreenedAlert, screen_records
from xmatch_pipeline.microbatch.offset_precondition import group_start_problem
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.microbatch.report import MicrobatchReport, RunMode, StageSeconds
from xmatch_pipeline.publish.dead_letter import DeadLetter, publish_dead_letter
from xmatch_pipeline.publish.enriched_alert import encode_enriched_alert
from xmatch_pipeline.publish.kafka_transaction import (
    MessageTooLargeError,
    TransactionalPublisher,
    TransactionTimeouts,
    backfill_transactional_id,
    transactional_id_for,
)
from xmatch_pipeline.publish.lsst_output import LsstOutputSchemaIds, encode_enriched_lsst_alert
from xmatch_pipeline.publish.message_limits import (
    MessageLimits,
    read_message_limits,
    record_bytes,
)
from xmatch_pipeline.read.kafka_offsets import KafkaOffsetsReader
from xmatch_pipeline.read.kafka_range_reader import KafkaRangeReader, KafkaRecord
from xmatch_pipeline.read.kafka_reader_pool import KafkaReaderPool
from xmatch_pipeline.settings import PipelineSettings
from xmatch_pipeline.store.errors import StoreError
from xmatch_pipeline.store.match_cache import StoredMatchCache
from xmatch_pipeline.store.match_writer import (
    MatchBatchRows,
    StepRecord,
    write_match_batch,
)
from xmatch_pipeline.store.range_ledger import RangeCounts, RangeLedger
from xmatch_pipeline.survey import Survey

logger = logging.getLogger(__name__)

#: Named points of a run, in order; a test hook can stop the process at any of them.
STAGES = ("consumed", "crossmatching", "produced", "database_committed")
StageHook = Callable[[str], None]


@dataclass(frozen=True)
class MicrobatchConfig:
    """What a run needs besides the range: the validated settings, and what is built from
    them once per run (the Kafka connections, the step row with the run's date)."""

    settings: PipelineSettings
    kafka: KafkaClientConfig
    step: StepRecord
    publisher_kafka: KafkaClientConfig | None = None
    """The transactional producer's connection when its credentials differ from the
    reader's (``PRODUCER_KAFKA_…``); None: the same as ``kafka``."""
    stall_timeout_seconds: float = 60.0
    transaction_timeouts: TransactionTimeouts = field(default_factory=TransactionTimeouts)
    #: Rubin's schemas by id, for LSST topics (packaged or a registry).
    lsst_schemas: LsstSchemaSource | None = None
    #: The enriched LSST alerts' schema ids (registered or fixed, ``publish.lsst_output``).
    lsst_output_ids: LsstOutputSchemaIds | None = None


class MicrobatchError(RuntimeError):
    """A run failed; nothing of it is visible downstream and its range can run again."""


class GroupNotAtRangeStartError(MicrobatchError):
    """A live range that does not start at the consumer group's offset: refused unrun."""


def _database_failure(offset_range: OffsetRange, doing: str, error: DBAPIError) -> MicrobatchError:
    """The run's error for a database failure: the driver's own message only (the
    statement and its rows stay out of logs), what was left and what to do."""
    reason = " ".join(str(error.orig).split())[:500]
    return MicrobatchError(
        f"{offset_range}: {doing}, the database failed ({type(error.orig).__name__}: "
        f"{reason}); nothing was committed (no rows, no output, no offsets): check "
        "PostgreSQL, then run the range again"
    )


@contextmanager
def _database_failures_explained(offset_range: OffsetRange, doing: str) -> Iterator[None]:
    try:
        yield
    except DBAPIError as error:
        raise _database_failure(offset_range, doing, error) from error


@contextmanager
def _timed(seconds: StageSeconds, stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        setattr(seconds, stage, getattr(seconds, stage) + time.perf_counter() - started)


@dataclass
class _RangeRun:
    """One run's inputs and what it gathers on the way to the database."""

    offset_range: OffsetRange
    mode: RunMode
    run_id: str
    produce_output: bool
    report: MicrobatchReport
    stored_matches: list[StoredMatches] = field(default_factory=list)
    limits: MessageLimits = field(default_factory=MessageLimits)
    survey: Survey = "ztf"


def _timed_iteration(
    chunks: Iterator[list[KafkaRecord]], seconds: StageSeconds
) -> Iterator[list[KafkaRecord]]:
    """Count the time spent waiting for each chunk as consume time."""
    while True:
        with _timed(seconds, "consume"):
            records = next(chunks, None)
        if records is None:
            return
        yield records


class MicrobatchRunner:
    """Runs offset ranges through the flow with long-lived clients (crossmatch engine, database)."""

    def __init__(
        self,
        config: MicrobatchConfig,
        crossmatch_engine: CrossmatchEngine,
        database: Engine,
        *,
        stage_hook: StageHook | None = None,
        readers: KafkaReaderPool | None = None,
        group_offsets: KafkaOffsetsReader | None = None,
    ) -> None:
        self.config = config
        self.crossmatch_engine = crossmatch_engine
        self.database = database
        # A long-lived process passes its own pool so readers outlive runs; by default
        # each run's reader is closed when the run ends.
        self._readers = readers or KafkaReaderPool(
            config.kafka, stall_timeout_seconds=config.stall_timeout_seconds, keep_idle=False
        )
        # The group's offsets (the start check) and the topics' limits, asked through a
        # long-lived process's kept reader; by default through clients of this runner's own.
        self._group_offsets = group_offsets or KafkaOffsetsReader(
            config.kafka,
            config.settings.consumer_group_id,
            timeout_seconds=config.settings.consume_timeout_seconds,
        )
        self.ledger = RangeLedger(database, config.settings.consumer_group_id)
        self._match_cache = StoredMatchCache(database) if config.settings.use_match_cache else None
        self._stage_hook = stage_hook or (lambda stage: None)
        self._lsst_output_ids = config.lsst_output_ids or LsstOutputSchemaIds(
            config.settings.output_topic
        )

    def run(
        self,
        offset_range: OffsetRange,
        *,
        run_id: str,
        mode: RunMode = "live",
        produce_output: bool = True,
    ) -> MicrobatchReport:
        """Process the range once; raise :class:`MicrobatchError` and leave nothing half-done.

        ``mode='live'`` commits the consumer group's offset to ``offset_range.end`` in the
        output's transaction. ``mode='backfill'`` never touches the group's offsets; with
        ``produce_output=False`` it only rewrites the database rows.
        """
        if mode == "live" and not produce_output:
            raise ValueError("a live run must produce its output: it commits the offsets with it")
        report = MicrobatchReport(
            offset_range=offset_range,
            mode=mode,
            run_id=run_id,
            started_at=datetime.now(UTC),
            output_produced=produce_output,
        )
        # The database down when the run starts (the lock, the ledger) is the system's fault
        # like any other: the pipeline's error, not the driver's.
        with (
            _database_failures_explained(offset_range, "could not start"),
            self.ledger.hold_partition(offset_range.topic, offset_range.partition, run_id) as hold,
        ):
            if mode == "live":
                # Under the partition lock: no other live run can move the group meanwhile.
                self._check_group_at_start(offset_range)
            self.ledger.record_started(offset_range, mode, run_id)
            run = _RangeRun(offset_range, mode, run_id, produce_output, report)
            run.survey = self.config.settings.topic_surveys.survey_of(offset_range.topic)
            if run.survey == "lsst" and self.config.lsst_schemas is None:
                raise MicrobatchError(
                    f"{offset_range}: topic {offset_range.topic!r} carries LSST alerts, but no "
                    "LSST schemas are configured (install lsst-alert-packet or set "
                    "XMATCH_LSST_SCHEMA_REGISTRY_URL)"
                )
            try:
                self._run_held(run, hold.still_held)
            except BaseException as error:
                self._record_failure(offset_range, mode, run_id, error)
                raise
        report.finished_at = datetime.now(UTC)
        return report

    def _record_failure(
        self, offset_range: OffsetRange, mode: RunMode, run_id: str, error: BaseException
    ) -> None:
        try:
            self.ledger.record_failed(
                offset_range, mode, run_id, f"{type(error).__name__}: {error}"
            )
        except Exception:  # the run's own error is the one worth raising
            logger.exception("could not record the failure of %s in the ledger", offset_range)

    def _check_group_at_start(self, offset_range: OffsetRange) -> None:
        """A live run commits the group to the range's end, so it must start where the
        group is; a group offset that cannot be read refuses the run (a system fault)."""
        config = self.config
        offsets = self._group_offsets
        key = offset_range.partition_id
        try:
            committed = offsets.committed_offsets([key]).get(key)
            if committed is None:  # a new group starts at the earliest offset kept
                committed = offsets.watermarks([key])[key][0]
        except KafkaOperationError as error:
            raise MicrobatchError(
                f"{offset_range}: could not read the offset of consumer group "
                f"{config.settings.consumer_group_id!r} ({error}); a live run must start where the "
                "group is, so it does not start without knowing: check the broker, then run "
                "the range again"
            ) from error
        problem = group_start_problem(offset_range, committed)
        if problem is not None:
            raise GroupNotAtRangeStartError(problem)

    def _publisher(
        self, offset_range: OffsetRange, mode: RunMode, limits: MessageLimits
    ) -> TransactionalPublisher:
        """A new transactional producer for every run, never one kept from an earlier run.

        Its ``init_transactions`` is what fences a dead predecessor and aborts the
        transaction it left open, so it must run at the start of every run. A producer
        kept in a worker could not redo it (librdkafka initializes once per producer), and
        runs of one partition land on any worker: another worker's producer with the same
        transactional id fences the kept one, which would learn it only at its commit and
        fail the run. A new producer costs tens of milliseconds (docs/benchmarks.md); a
        failed run's producer is closed here (aborting its open transaction) and, should
        that abort fail, fenced by the next run's.
        """
        transactional_id = (
            transactional_id_for(
                self.config.settings.consumer_group_id, offset_range.topic, offset_range.partition
            )
            if mode == "live"
            else backfill_transactional_id(offset_range)
        )
        return TransactionalPublisher(
            self.config.publisher_kafka or self.config.kafka,
            transactional_id,
            max_message_bytes=limits.producer_max_bytes,
            batch_bytes=limits.producer_batch_bytes,
            timeouts=self.config.transaction_timeouts,
        )

    def _run_held(self, run: _RangeRun, still_held: Callable[[], bool]) -> None:
        config = self.config
        # Backfills read under a group of their own: nothing of theirs can ever be
        # committed for the live group.
        group_id = config.settings.consumer_group_id
        if run.mode == "backfill":
            group_id = f"{group_id}.backfill"
        reader = self._readers.take(group_id)
        publisher = None
        ended_cleanly = False
        try:
            if run.produce_output:
                run.limits = read_message_limits(
                    config.kafka,
                    config.settings.output_topic,
                    config.settings.dead_letter_topic,
                    timeout_seconds=config.settings.consume_timeout_seconds,
                    admin=self._group_offsets.admin,
                )
                publisher = self._publisher(run.offset_range, run.mode, run.limits)
            reader.check_readable(run.offset_range)
            if publisher is not None:
                publisher.init()
                publisher.begin()
            for records in _timed_iteration(
                reader.read(run.offset_range, config.settings.chunk_messages), run.report.seconds
            ):
                self._process_chunk(run, records, publisher)
            self._stage_hook("produced")
            with _timed(run.report.seconds, "database"):
                self._persist(run)
            self._stage_hook("database_committed")
            if publisher is not None:
                if not still_held():
                    raise MicrobatchError(
                        f"{run.offset_range}: lost the partition lock (database connection "
                        "dropped); not committing, the range will run again"
                    )
                with _timed(run.report.seconds, "commit"):
                    self._commit(run, publisher, reader)
            ended_cleanly = True
        finally:
            if publisher is not None:
                publisher.close()
            self._readers.release(reader, reusable=ended_cleanly)

    def _process_chunk(
        self,
        run: _RangeRun,
        records: list[KafkaRecord],
        publisher: TransactionalPublisher | None,
    ) -> None:
        report = run.report
        report.messages_in += len(records)
        report.bytes_in += sum(record.size for record in records)
        self._stage_hook("consumed")
        with _timed(report.seconds, "decode"):
            alerts, dead_letters = screen_records(records, run.survey, self.config.lsst_schemas)
        self._stage_hook("crossmatching")
        with _timed(report.seconds, "crossmatch"):
            matches = crossmatch_alerts(
                alerts,
                self.crossmatch_engine,
                self.config.settings.catalogs,
                partial(self._match_cache.known_matches, survey=run.survey)
                if self._match_cache
                else None,
            )
        report.sent_to_engine += matches.sent_to_engine
        report.served_from_cache += matches.served_from_cache
        if publisher is not None:
            with _timed(report.seconds, "produce"):
                published = self._produce(run, publisher, alerts, dead_letters, matches)
            if len(published) < len(alerts):
                alerts = published
                matches = matches.only({alert.candid for alert in published})
        report.dead_lettered += len(dead_letters)
        report.alerts_decoded += len(alerts)
        report.alerts_matched += matches.matched_alerts
        report.candids.extend(alert.candid for alert in alerts)
        report.object_ids.extend(alert.object_id for alert in alerts)
        run.stored_matches.extend(matches.stored_matches)

    def _commit(
        self, run: _RangeRun, publisher: TransactionalPublisher, reader: KafkaRangeReader
    ) -> None:
        if run.mode == "live":
            publisher.commit_with_offsets(
                {run.offset_range.partition_id: run.offset_range.end},
                reader.consumer_group_metadata(),
                reader.group_id,
            )
            run.report.offsets_committed = True
        else:
            publisher.commit()

    def _produce(
        self,
        run: _RangeRun,
        publisher: TransactionalPublisher,
        alerts: list[ScreenedAlert],
        dead_letters: list[DeadLetter],
        matches: BatchMatches,
    ) -> list[ScreenedAlert]:
        """Produce each alert's output, or dead-letter it when the output cannot be written
        or published (``bad_input``); then every dead letter. Returns the alerts published."""
        config, report = self.config, run.report
        published: list[ScreenedAlert] = []
        for screened in alerts:
            letter = self._produce_output(run, publisher, screened, matches)
            if letter is None:
                published.append(screened)
            else:
                dead_letters.append(letter)
        for dead_letter in dead_letters:
            publish_dead_letter(
                publisher,
                config.settings.dead_letter_topic,
                dead_letter,
                max_record_bytes=run.limits.dead_letter_bytes,
            )
        report.produced += len(published)
        return published

    def _produce_output(
        self,
        run: _RangeRun,
        publisher: TransactionalPublisher,
        screened: ScreenedAlert,
        matches: BatchMatches,
    ) -> DeadLetter | None:
        config = self.config
        xmatches = matches.xmatches_by_candid.get(screened.candid)
        try:
            provenance = matches.provenance_by_candid.get(screened.candid)
            all_matches = matches.all_matches_by_candid.get(screened.candid)
            if isinstance(screened.alert, LsstAlert):
                value = encode_enriched_lsst_alert(
                    screened.alert,
                    xmatches,
                    self._lsst_output_ids,
                    precision=config.settings.output_precision,
                    provenance=provenance,
                    all_matches=all_matches,
                )
            else:
                value = encode_enriched_alert(
                    screened.alert,
                    xmatches,
                    precision=config.settings.output_precision,
                    provenance=provenance,
                    all_matches=all_matches,
                )
        except (ValueError, TypeError, OverflowError) as error:
            return DeadLetter(
                screened.record,
                f"the output schema cannot carry this alert: {error}",
                type(error).__qualname__,
            )
        size = record_bytes(value, screened.object_id)
        if size > run.limits.output_bytes:
            return DeadLetter(
                screened.record,
                f"too large to publish: the enriched alert takes {size} bytes, the output "
                f"topic {config.settings.output_topic} accepts {run.limits.output_bytes} "
                "(max.message.bytes)",
                "OutputTooLarge",
            )
        try:
            publisher.produce(config.settings.output_topic, value, key=screened.object_id)
        except MessageTooLargeError as error:
            return DeadLetter.from_exception(screened.record, error)
        run.report.bytes_out += len(value)
        return None

    def _persist(self, run: _RangeRun) -> None:
        rows = _database_rows(
            run.report.object_ids, run.stored_matches, self.config.step, run.survey
        )
        counts = RangeCounts(
            alerts_in=run.report.messages_in,
            matched=run.report.alerts_matched,
            dead_lettered=run.report.dead_lettered,
        )
        try:
            with self.database.begin() as connection:
                # The nearest match per object wins, whatever order ranges run in, so a
                # backfill over processed offsets rewrites nothing.
                run.report.database_counts = write_match_batch(connection, rows, keep="nearest")
                self.ledger.record_succeeded(
                    run.offset_range, run.mode, run.run_id, counts, connection=connection
                )
        except StoreError as error:
            raise MicrobatchError(
                f"{run.offset_range}: could not store the matches: {error}"
            ) from error
        except DBAPIError as error:
            raise _database_failure(
                run.offset_range, "could not store the matches", error
            ) from error


def _database_rows(
    object_ids: list[str], stored_matches: list[StoredMatches], step: StepRecord, survey: Survey
) -> MatchBatchRows:
    """Each stored catalog's rows and its ``xmatch`` rows, from the run's matches."""
    catalog_rows: dict[str, list[dict[str, object]]] = {}
    links: list[dict[str, object]] = []
    for stored in stored_matches:
        definition = stored.catalog.definition
        if definition.table is None or stored.frame.empty:
            continue
        catalog_rows.setdefault(definition.table.name, []).extend(
            catalog_table_rows(definition, stored.frame)
        )
        links.extend(xmatch_rows(definition, stored.frame, stored.provenance))
    return MatchBatchRows(
        object_ids=object_ids,
        catalog_rows=catalog_rows,
        xmatch_rows=links,
        step=step,
        survey=survey,
    )
