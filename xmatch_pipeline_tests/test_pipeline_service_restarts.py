"""The Kafka broker, then PostgreSQL, stopped and restarted mid-run, three times each.

Each scenario runs one input partition of three ranges on a broker or database server of
its own (``own_services``; the shared devstack is never stopped). Range by range: the
sensor plans the range; its first run is made by the runner with a stage hook that stops
the service at a named stage and starts it again (in the background, so the run carries on
against a service that is down, then coming back; or before the run goes on, so it meets
a restarted server). That run must return within its budgets (no wait without a bound),
riding the outage out or failing with an error, and a sensor tick while the broker is
away fails within its timeout; then the sensor's retries through the Dagster job converge
within the attempt limit: after each range every alert so far is in the output exactly
once (``read_committed``), the database holds exactly their matches, and the group's
offset is at the range's end.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from dagster import DagsterInstance

from xmatch_pipeline.devtools.devstack import DevstackSettings
from xmatch_pipeline.kafka.client_config import KafkaOperationError
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.microbatch.runner import MicrobatchRunner
from xmatch_pipeline.publish.kafka_transaction import TransactionTimeouts
from xmatch_pipeline.services import PipelineServices
from xmatch_pipeline.settings import load_settings
from xmatch_pipeline_tests.failure_fixtures import (
    InputStream,
    assert_database_holds_exactly,
    read_candids,
    write_input_stream,
)
from xmatch_pipeline_tests.own_services import (
    OwnService,
    Restart,
    RestartAt,
    own_kafka,
    own_postgres,
)
from xmatch_pipeline_tests.pipeline_fixtures import (
    create_topic,
    evaluate_sensor,
    execute_request,
    fresh_database,
    group_offsets,
    pipeline_environment,
    unique_group,
    xmatch_resource,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

logger = logging.getLogger(__name__)

RANGE_MESSAGES = 30
RANGES = 3
CHUNK_MESSAGES = 10
MAX_RUN_ATTEMPTS = 3
#: How long the sensor waits for Kafka's offsets (XMATCH_KAFKA_TIMEOUT).
SENSOR_TIMEOUT_SECONDS = 3.0
#: How long after the stop a run must have returned: the commit's and the abort's
#: budgets, and a margin for what the run does besides.
RETURN_MARGIN_SECONDS = 5.0
#: A commit's budget short enough to be outlasted by the broker's absence.
SHORT_BUDGETS = TransactionTimeouts(init_seconds=10.0, operation_seconds=4.0)


@dataclass(frozen=True)
class Cycle:
    """One range: where its first run loses the service, with which Kafka budgets, and
    whether that run must fail (the service stays away longer than the run may wait)."""

    restart: Restart
    budgets: TransactionTimeouts = field(default_factory=TransactionTimeouts)
    must_fail: bool = False
    #: Tick the sensor while the service is still away: the tick must fail, within its
    #: own timeout, with the pipeline's error.
    tick_while_down: bool = False


#: "consumed" #2 is mid-read (a chunk already produced, more to read), "crossmatching" #2
#: mid-match, "produced" after the last chunk before both commits, "database_committed"
#: between the two commits.
KAFKA_CYCLES = [
    Cycle(Restart("consumed", 2)),
    Cycle(Restart("produced")),
    Cycle(
        Restart("database_committed", down_seconds=12.0),
        SHORT_BUDGETS,
        must_fail=True,
        tick_while_down=True,
    ),
]
#: The partition lock dies with the run's database session, so every run must fail.
POSTGRES_CYCLES = [
    Cycle(Restart("consumed", 2, in_background=False), must_fail=True),
    Cycle(Restart("crossmatching", 2), must_fail=True),
    Cycle(Restart("database_committed"), must_fail=True),
]


@dataclass
class Scenario:
    service: OwnService
    kafka_bootstrap: str
    database_url: str
    stream: InputStream
    output_topic: str
    group_id: str
    environment: dict[str, str]


def _scenario(
    service: OwnService,
    kafka_bootstrap: str,
    database_url: str,
    shared_data_dir: Path,
    allwise_index: Path,
) -> Scenario:
    input_topic = create_topic(kafka_bootstrap, f"restart-{service.name.lower()}-in")
    output_topic = create_topic(kafka_bootstrap, f"restart-{service.name.lower()}-out")
    stream = write_input_stream(
        kafka_bootstrap, input_topic, shared_data_dir, RANGES * RANGE_MESSAGES, seed=47
    )
    group_id = unique_group("restart")
    environment = pipeline_environment(
        kafka_bootstrap=kafka_bootstrap,
        database_url=database_url,
        input_topic=input_topic,
        output_topic=output_topic,
        group_id=group_id,
        index_dir=allwise_index,
        XMATCH_CHUNK_MESSAGES=str(CHUNK_MESSAGES),
        XMATCH_MAX_MESSAGES_PER_RUN=str(RANGE_MESSAGES),
        XMATCH_MAX_RUN_ATTEMPTS=str(MAX_RUN_ATTEMPTS),
        XMATCH_KAFKA_TIMEOUT=f"{SENSOR_TIMEOUT_SECONDS:g}",
    )
    return Scenario(
        service, kafka_bootstrap, database_url, stream, output_topic, group_id, environment
    )


@pytest.fixture(autouse=True)
def _no_stale_kafka_clients() -> None:
    """Earlier tests' clients left in reference cycles are freed here, on this thread, before
    a broker of our own comes and goes (see ``_collect_kafka_clients``)."""
    _collect_kafka_clients()


@pytest.fixture
def kafka_scenario(
    devstack: DevstackSettings,
    database_url: str,
    shared_data_dir: Path,
    allwise_index: Path,
) -> Iterator[Scenario]:
    with own_kafka(devstack) as kafka, fresh_database(database_url) as url:
        yield _scenario(
            kafka, kafka.settings.kafka_bootstrap_servers, url, shared_data_dir, allwise_index
        )


@pytest.fixture
def postgres_scenario(
    devstack: DevstackSettings,
    kafka_bootstrap: str,
    shared_data_dir: Path,
    allwise_index: Path,
) -> Iterator[Scenario]:
    with own_postgres(devstack) as postgres, fresh_database(postgres.settings.database_url) as url:
        yield _scenario(postgres, kafka_bootstrap, url, shared_data_dir, allwise_index)


def _failure_of(runner: MicrobatchRunner, offset_range: OffsetRange, run_id: str) -> str | None:
    """Run the range once; what it failed with, if it did (any failure will do, as long as
    the retry converges). The exception itself is not kept: see ``_collect_kafka_clients``."""
    try:
        runner.run(offset_range, run_id=run_id)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def _collect_kafka_clients() -> None:
    """Collect, on this thread, Kafka clients a failure's traceback left in reference cycles.

    Left to the collector, such a cycle may be collected on one of librdkafka's own threads
    (an admin callback that allocates) and the client's destructor then kills the process
    (confluent-kafka-python issue #1761, and the fix of its own tests, PR #2131).
    """
    gc.collect()


def _converge_after_each_restart(scenario: Scenario, cycles: list[Cycle]) -> list[str]:
    """Run the ranges as described above; what each range's first run did."""
    xmatch = xmatch_resource(scenario.environment)
    instance = DagsterInstance.ephemeral()
    services = PipelineServices(load_settings(scenario.environment))
    topic, bootstrap = scenario.stream.topic, scenario.kafka_bootstrap
    cursor: str | None = None
    outcomes: list[str] = []
    try:
        for number, cycle in enumerate(cycles):
            restart = cycle.restart
            offset_range = OffsetRange(
                topic, 0, number * RANGE_MESSAGES, (number + 1) * RANGE_MESSAGES
            )
            tick = evaluate_sensor(xmatch, instance, cursor)
            cursor = tick.cursor
            (planned,) = tick.run_requests or []
            assert planned.run_key == f"{offset_range}#attempt1"

            hook = RestartAt(scenario.service, restart)
            runner = MicrobatchRunner(
                replace(services.microbatch_config(), transaction_timeouts=cycle.budgets),
                services.crossmatch_engine,
                services.database,
                stage_hook=hook,
            )
            failure = _failure_of(runner, offset_range, f"restart-{number}")
            returned = time.monotonic()
            _collect_kafka_clients()
            assert hook.stopped_at is not None, f"the run never reached {restart}"
            after_stop = returned - hook.stopped_at
            outcome = (
                f"{restart}: {failure or 'rode it out'}, returned {after_stop:.1f} s after the stop"
            )
            # Every wait of the run is bounded: none outlasts the commit's and abort's budgets.
            bound = 2 * cycle.budgets.operation_seconds + RETURN_MARGIN_SECONDS
            assert after_stop < bound, outcome
            if cycle.must_fail:
                assert failure is not None, outcome
            if cycle.tick_while_down:
                tick_started = time.monotonic()
                with pytest.raises(KafkaOperationError, match="check") as failed_tick:
                    evaluate_sensor(xmatch, instance, cursor)
                # Two lookups (topics, then lags), each within the sensor's timeout.
                assert time.monotonic() - tick_started < 2 * SENSOR_TIMEOUT_SECONDS + 2.0
                del failed_tick
                _collect_kafka_clients()
                assert not hook.is_back(), "the tick must have run while the broker was away"
            hook.wait_until_back()

            retries = 0
            while group_offsets(bootstrap, scenario.group_id, topic)[0] != offset_range.end:
                retries += 1
                assert retries < MAX_RUN_ATTEMPTS, f"no convergence after {outcome}"
                tick = evaluate_sensor(xmatch, instance, cursor)
                cursor = tick.cursor
                requests = tick.run_requests or []
                assert len(requests) == 1, (outcome, tick.skip_reason)
                (retry,) = requests
                assert retry.run_key == f"{offset_range}#attempt{retries + 1}", outcome
                result = execute_request(xmatch, instance, retry)
                assert result.success, (
                    outcome,
                    [str(e) for e in result.all_events if e.is_failure],
                )
            outcomes.append(f"{outcome}; {retries} retries")
            logger.info("range %s: %s", offset_range, outcomes[-1])

            so_far = scenario.stream.first(offset_range.end)
            committed = read_candids(bootstrap, scenario.output_topic, "read_committed")
            assert sorted(committed) == sorted(so_far.candids), outcome
            assert_database_holds_exactly(scenario.database_url, so_far)
            assert group_offsets(bootstrap, scenario.group_id, topic)[0] == offset_range.end
    finally:
        services.dispose()
    logger.info("%s restarts took %s s", scenario.service.name, scenario.service.restarts)
    return outcomes


def test_broker_restarted_mid_run_three_times_converges_exactly_once(
    kafka_scenario: Scenario,
) -> None:
    outcomes = _converge_after_each_restart(kafka_scenario, KAFKA_CYCLES)
    assert len(outcomes) == len(kafka_scenario.service.restarts) == 3, outcomes


def test_postgres_restarted_mid_run_three_times_converges_exactly_once(
    postgres_scenario: Scenario,
) -> None:
    outcomes = _converge_after_each_restart(postgres_scenario, POSTGRES_CYCLES)
    assert len(outcomes) == len(postgres_scenario.service.restarts) == 3, outcomes
