"""Warm services in a long-lived process: many runs, one set of clients, no leaks.

A worker executes run after run in one process, so the runs here execute in this process
(``execute_in_process``, through the job's resource as a worker runs them) on the real
Kafka, PostgreSQL and ``cds-server``: one run fails mid-way on purpose, the next succeed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from dagster import DagsterInstance
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from xmatch_pipeline.devtools.cds_server import CdsXmatchServer
from xmatch_pipeline.devtools.cds_server.faults import Fault
from xmatch_pipeline.match.cds.client import CdsXmatchClient
from xmatch_pipeline.match.local.index import LocalCrossmatchEngine
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.microbatch.planning import PlannedRun
from xmatch_pipeline.orchestration.sensors import run_request
from xmatch_pipeline.services import PipelineServices
from xmatch_pipeline.settings import load_settings
from xmatch_pipeline.store.match_cache import StoredMatchCache
from xmatch_pipeline.warm_services import MAX_KEPT_SETTINGS, kept_services, warm_services
from xmatch_pipeline_tests.failure_fixtures import read_candids
from xmatch_pipeline_tests.pipeline_fixtures import (
    execute_request,
    group_offsets,
    high_watermarks,
    pipeline_environment,
    produce_values,
    read_committed,
    small_stream,
    unique_group,
    xmatch_resource,
)

pytestmark = pytest.mark.timeout(180)

RUN_SIZE = 5


def _open_transactions(database_url: str) -> int:
    """Sessions of the pipeline on this database left inside a transaction."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                        "current_database() AND application_name = 'xmatch_pipeline' "
                        "AND state LIKE 'idle in transaction%'"
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()


def test_runs_in_one_process_reuse_the_clients_and_a_failed_run_leaves_nothing_behind(
    *,
    shared_data_dir: Path,
    tmp_path: Path,
    cds_server: CdsXmatchServer,
    kafka_bootstrap: str,
    fresh_database_url: str,
    new_topic: Callable[..., str],
) -> None:
    stream = small_stream(shared_data_dir, tmp_path)
    topic, output = new_topic("warm-in"), new_topic("warm-out")
    environment = pipeline_environment(
        kafka_bootstrap=kafka_bootstrap,
        database_url=fresh_database_url,
        input_topic=topic,
        output_topic=output,
        group_id=unique_group(),
        XMATCH_ENGINE="cds",
        XMATCH_CDS_URL=cds_server.url,
        XMATCH_MATCH_CACHE="false",
        XMATCH_CHUNK_MESSAGES="2",
        RETRIES="0",
    )
    xmatch = xmatch_resource(environment)
    produce_values(kafka_bootstrap, topic, stream.messages[: 3 * RUN_SIZE])
    instance = DagsterInstance.ephemeral()

    def run(start: int, attempt: int = 1) -> bool:
        planned = PlannedRun(OffsetRange(topic, 0, start, start + RUN_SIZE), attempt, "test")
        return execute_request(xmatch, instance, run_request(planned)).success

    assert run(0)
    services = xmatch_resource(environment).services()
    database, engine = services.database, services.crossmatch_engine
    run_offsets = services.run_offsets_reader  # the start check's and the topic limits'
    assert isinstance(engine, CdsXmatchClient)
    assert services.range_readers.created == 1
    assert services.range_readers.idle_count() == 1

    # Mid-way: the first chunk is matched and produced into the open Kafka transaction,
    # the second chunk's CDS request fails.
    cds_server.set_faults([Fault("delay", times=1, seconds=0), Fault("500", times=None)])
    assert not run(RUN_SIZE)
    cds_server.set_faults([])
    assert database.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert _open_transactions(fresh_database_url) == 0
    # The failed run's reader was closed, not kept; its transaction was aborted (the last
    # stable offset is the log's end: no transaction of it is left open).
    assert services.range_readers.idle_count() == 0
    assert high_watermarks(kafka_bootstrap, output) == high_watermarks(
        kafka_bootstrap, output, "read_uncommitted"
    )
    assert len(read_committed(kafka_bootstrap, output)) == RUN_SIZE

    assert run(RUN_SIZE, attempt=2)
    assert run(2 * RUN_SIZE)
    # The same clients served every run.
    again = xmatch_resource(environment).services()
    assert again is services
    assert again.database is database
    assert again.crossmatch_engine is engine
    assert again.run_offsets_reader is run_offsets
    assert again.range_readers.created == 2  # the first, and one after the failure
    assert again.cds_sessions_opened == 2  # likewise: not one per run
    assert database.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert _open_transactions(fresh_database_url) == 0
    # The match cache is a query, not state carried from run to run.
    assert vars(StoredMatchCache(database)) == {"_database": database}

    candids = read_candids(kafka_bootstrap, output)
    assert len(candids) == len(set(candids)) == 3 * RUN_SIZE
    assert group_offsets(kafka_bootstrap, environment["CONSUMER_GROUP_ID"], topic) == {
        0: 3 * RUN_SIZE
    }


def test_the_local_index_stays_warm_across_runs(
    *,
    shared_data_dir: Path,
    tmp_path: Path,
    kafka_bootstrap: str,
    fresh_database_url: str,
    new_topic: Callable[..., str],
) -> None:
    stream = small_stream(shared_data_dir, tmp_path)
    topic, output = new_topic("warm-local-in"), new_topic("warm-local-out")
    environment = pipeline_environment(
        kafka_bootstrap=kafka_bootstrap,
        database_url=fresh_database_url,
        input_topic=topic,
        output_topic=output,
        group_id=unique_group(),
        index_dir=stream.index_dir,
    )
    xmatch = xmatch_resource(environment)
    produce_values(kafka_bootstrap, topic, stream.messages[: 2 * RUN_SIZE])
    instance = DagsterInstance.ephemeral()
    caches = []
    for start in (0, RUN_SIZE):
        planned = PlannedRun(OffsetRange(topic, 0, start, start + RUN_SIZE), 1, "test")
        assert execute_request(xmatch, instance, run_request(planned)).success
        engine = xmatch_resource(environment).services().crossmatch_engine
        assert isinstance(engine, LocalCrossmatchEngine)
        caches.append(engine.index("allwise").cache)
        assert caches[-1].cached_bytes > 0
    assert caches[0] is caches[1]
    assert len(read_committed(kafka_bootstrap, output)) == 2 * RUN_SIZE


def test_a_few_settings_are_kept_and_the_oldest_disposed(database_url: str) -> None:
    def settings(group: str) -> dict[str, str]:
        return pipeline_environment(
            kafka_bootstrap="127.0.0.1:9",
            database_url=database_url,
            input_topic="unused",
            output_topic="unused",
            group_id=group,
        )

    first = warm_services(load_settings(settings("kept-0")))
    assert warm_services(load_settings(settings("kept-0"))) is first
    for number in range(1, MAX_KEPT_SETTINGS + 1):
        warm_services(load_settings(settings(f"kept-{number}")))
    kept = kept_services()
    assert len(kept) == MAX_KEPT_SETTINGS
    assert first not in kept
    assert warm_services(load_settings(settings("kept-0"))) is not first


FORKING = textwrap.dedent(
    """
    import json, os, sys
    from sqlalchemy import text
    from xmatch_pipeline.settings import load_settings
    from xmatch_pipeline.warm_services import warm_services

    settings = load_settings(json.loads(sys.argv[1]))
    parent = warm_services(settings)
    with parent.database.connect() as connection:
        before = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
    parent.offsets_reader  # a librdkafka client the child must never touch
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        services = warm_services(settings)
        with services.database.connect() as connection:
            pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        os.write(write, json.dumps({"new": services is not parent, "pid": pid}).encode())
        os._exit(0)
    os.waitpid(child, 0)
    seen = json.loads(os.read(read, 1000))
    with parent.database.connect() as connection:
        after = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
    print(json.dumps({**seen, "before": before, "after": after}))
    """
)


def test_a_forked_child_builds_its_own_services_and_leaves_the_parents_alone(
    database_url: str, kafka_bootstrap: str
) -> None:
    import json

    environment = pipeline_environment(
        kafka_bootstrap=kafka_bootstrap,
        database_url=database_url,
        input_topic="unused",
        output_topic="unused",
        group_id=unique_group(),
    )
    answer = subprocess.run(
        [sys.executable, "-c", FORKING, json.dumps(environment)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(answer.stdout.strip().splitlines()[-1])
    assert seen["new"] is True
    assert seen["pid"] != seen["before"]  # the child opened a session of its own
    assert seen["after"] == seen["before"]  # the parent's pooled session survived the child


def test_disposing_closes_what_was_built(database_url: str) -> None:
    services = PipelineServices(
        load_settings(
            pipeline_environment(
                kafka_bootstrap="127.0.0.1:9",
                database_url=database_url,
                input_topic="unused",
                output_topic="unused",
                group_id=unique_group(),
            )
        )
    )
    with services.database.connect():
        pass
    assert services.database.pool.checkedin() == 1  # type: ignore[attr-defined]
    services.dispose()
    assert services.database.pool.checkedin() == 0  # type: ignore[attr-defined]
