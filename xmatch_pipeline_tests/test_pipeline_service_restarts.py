"""The Kafka broker, then PostgreSQL, stopped and restarted mid-run, three times each.

Each scenario runs one input partition of three ranges on a broker or database server of
its own (``own_services``; the shared devstack is never stopped). Range by range: the
sensor plans the range; its first run is made by the runner with a stage hook that stops
the service at a named stage and starts it again in the background, so the run carries on
against a service that is down, then coming back. Whatever that run does (rides the outage
out, or fails with an error), the sensor's retries through the Dagster job converge within
the attempt limit: after each range every alert so far is in the output exactly once
(``read_committed``), the database holds exactly their matches, and the group's offset is
at the range's end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import DagsterInstance

from xmatch_pipeline.devstack import DevstackSettings
from xmatch_pipeline.microbatch import MicrobatchRunner
from xmatch_pipeline.offset_range import OffsetRange
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
    use_environment,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

logger = logging.getLogger(__name__)

RANGE_MESSAGES = 30
RANGES = 3
CHUNK_MESSAGES = 10
MAX_RUN_ATTEMPTS = 3
#: Where each range's first run loses the service. "consumed" #2 is mid-read (a chunk
#: already produced, more to read), "crossmatching" #2 mid-match, "produced" after the
#: last chunk before both commits, "database_committed" between the two commits.
KAFKA_RESTARTS = [Restart("consumed", 2), Restart("produced"), Restart("database_committed")]
POSTGRES_RESTARTS = [
    Restart("consumed", 2, in_background=False),
    Restart("crossmatching", 2),
    Restart("database_committed"),
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
    )
    return Scenario(
        service, kafka_bootstrap, database_url, stream, output_topic, group_id, environment
    )


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


def _converge_after_each_restart(
    scenario: Scenario, restarts: list[Restart], monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """Run the ranges as described above; what each range's first run did."""
    use_environment(monkeypatch, scenario.environment)
    instance = DagsterInstance.ephemeral()
    services = PipelineServices(load_settings(scenario.environment))
    topic, bootstrap = scenario.stream.topic, scenario.kafka_bootstrap
    cursor: str | None = None
    outcomes: list[str] = []
    try:
        for number, restart in enumerate(restarts):
            offset_range = OffsetRange(
                topic, 0, number * RANGE_MESSAGES, (number + 1) * RANGE_MESSAGES
            )
            tick = evaluate_sensor(instance, cursor)
            cursor = tick.cursor
            (planned,) = tick.run_requests or []
            assert planned.run_key == f"{offset_range}#attempt1"

            hook = RestartAt(scenario.service, restart)
            runner = MicrobatchRunner(
                services.microbatch_config(),
                services.crossmatch_engine,
                services.database,
                stage_hook=hook,
            )
            started = time.monotonic()
            try:
                runner.run(offset_range, run_id=f"restart-{number}")
                outcome = f"{restart}: rode the restart out"
            except Exception as error:  # any failure is fine, as long as the retry converges
                outcome = f"{restart}: failed with {type(error).__name__}: {error}"
            outcome += f" in {time.monotonic() - started:.1f} s"
            hook.wait_until_back()

            retries = 0
            while group_offsets(bootstrap, scenario.group_id, topic)[0] != offset_range.end:
                retries += 1
                assert retries < MAX_RUN_ATTEMPTS, f"no convergence after {outcome}"
                tick = evaluate_sensor(instance, cursor)
                cursor = tick.cursor
                requests = tick.run_requests or []
                assert len(requests) == 1, (outcome, tick.skip_reason)
                (retry,) = requests
                assert retry.run_key == f"{offset_range}#attempt{retries + 1}", outcome
                result = execute_request(instance, retry)
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
    kafka_scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes = _converge_after_each_restart(kafka_scenario, KAFKA_RESTARTS, monkeypatch)
    assert len(outcomes) == len(kafka_scenario.service.restarts) == 3, outcomes


def test_postgres_restarted_mid_run_three_times_converges_exactly_once(
    postgres_scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes = _converge_after_each_restart(postgres_scenario, POSTGRES_RESTARTS, monkeypatch)
    assert len(outcomes) == len(postgres_scenario.service.restarts) == 3, outcomes
    # The run's partition lock dies with its database session: no run may commit after it.
    assert all("failed" in outcome for outcome in outcomes), outcomes
