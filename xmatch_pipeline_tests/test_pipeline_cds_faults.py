"""CDS faults through the whole pipeline (sensor → job), against the local ``cds-server``.

Transient faults are retried inside the run; a fault that outlasts the retries (or that no
retry can fix) fails the run cleanly: nothing produced, no offsets, no rows, the ledger says
why; once CDS answers again the sensor's retry of the same range succeeds.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import DagsterInstance

from xmatch_pipeline.decode.avro_codec import decode_alert
from xmatch_pipeline.devtools.cds_server.catalogs import ServedCatalogs
from xmatch_pipeline.devtools.cds_server.faults import Fault
from xmatch_pipeline.devtools.cds_server.server import CdsXmatchServer
from xmatch_pipeline.orchestration.resources import XmatchResource
from xmatch_pipeline_tests.pipeline_fixtures import (
    SmallStream,
    evaluate_sensor,
    execute_request,
    group_offsets,
    pipeline_environment,
    produce_values,
    query,
    read_committed,
    small_stream,
    unique_group,
    xmatch_resource,
)

pytestmark = pytest.mark.timeout(120)

ALERTS = 6
#: The flow's CDS deadline and read timeout (s), and a margin for the run around the call.
DEADLINE_SECONDS, READ_TIMEOUT_SECONDS, RUN_MARGIN_SECONDS = 6.0, 2.0, 5.0
#: A slow body's pause between pieces: each read is quick (under the read timeout) while
#: the whole answer (~1 kB in 64-byte pieces) would take far longer than the deadline.
SLOW_BODY_PAUSE_SECONDS = 1.5
#: Each test takes alerts of its own, so objects (and their rows) never overlap.
_slots = itertools.count()


@pytest.fixture(scope="module")
def stream(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SmallStream:
    return small_stream(shared_data_dir, tmp_path_factory.mktemp("cds-faults-catalog"))


@pytest.fixture(scope="module")
def server(stream: SmallStream) -> Iterator[CdsXmatchServer]:
    with CdsXmatchServer(ServedCatalogs({"allwise": stream.index_dir})) as running:
        yield running


@dataclass
class Flow:
    topic: str
    output: str
    group: str
    object_ids: list[str]
    expected_matches: int
    xmatch: XmatchResource


@pytest.fixture
def flow(
    *,
    stream: SmallStream,
    server: CdsXmatchServer,
    kafka_bootstrap: str,
    fresh_database_url: str,
    new_topic: Callable[..., str],
) -> Flow:
    """Six alerts of their own (distinct objects per test) and a fast-failing CDS client."""
    server.faults.replace([])
    first = ALERTS * next(_slots)
    messages = stream.messages[first : first + ALERTS]
    environment = pipeline_environment(
        kafka_bootstrap=kafka_bootstrap,
        database_url=fresh_database_url,
        input_topic=new_topic("cds-faults-in"),
        output_topic=new_topic("cds-faults-out"),
        group_id=unique_group(),
        XMATCH_ENGINE="cds",
        XMATCH_CDS_URL=server.url,
        XMATCH_MATCH_CACHE="false",
        XMATCH_CDS_READ_TIMEOUT=f"{READ_TIMEOUT_SECONDS:g}",
        XMATCH_CDS_DEADLINE=f"{DEADLINE_SECONDS:g}",
        RETRIES="3",
        RETRY_INTERVAL="0.05",
    )
    xmatch = xmatch_resource(environment)
    produce_values(kafka_bootstrap, environment["CONSUMER_TOPICS"], messages)
    matches = sum(1 for number in range(first, first + ALERTS) if number % 3 != 2)
    return Flow(
        environment["CONSUMER_TOPICS"],
        environment["PRODUCER_TOPIC"],
        environment["CONSUMER_GROUP_ID"],
        [object_id for object_id, _ in messages],
        matches,
        xmatch,
    )


def _stored_matches(database_url: str, object_ids: list[str]) -> int:
    ((count,),) = query(
        database_url, "SELECT count(*) FROM xmatch WHERE oid = ANY(:oids)", oids=object_ids
    )
    return int(count)


def _assert_exactly_once(bootstrap: str, flow: Flow) -> None:
    received = read_committed(bootstrap, flow.output)
    candids = [decode_alert(message.value).candid for message in received]
    assert len(candids) == len(set(candids)) == ALERTS
    assert group_offsets(bootstrap, flow.group, flow.topic) == {0: ALERTS}


def test_two_server_errors_then_success_is_one_clean_run(
    flow: Flow, server: CdsXmatchServer, kafka_bootstrap: str, fresh_database_url: str
) -> None:
    server.faults.replace([Fault("500", times=2)])
    instance = DagsterInstance.ephemeral()
    (request,) = evaluate_sensor(flow.xmatch, instance, None).run_requests or []

    assert execute_request(flow.xmatch, instance, request).success

    sent = server.requests[-3:]
    assert [r.status for r in sent] == [500, 500, 200]
    assert len({r.upload_sha256 for r in sent}) == 1, "a retry must resend the same upload"
    _assert_exactly_once(kafka_bootstrap, flow)
    assert _stored_matches(fresh_database_url, flow.object_ids) == flow.expected_matches


@pytest.mark.parametrize(
    ("fault", "requests_per_run", "reason"),
    [
        (Fault("503", times=None), 4, "503"),
        (Fault("400", times=None), 1, "400"),
        # Wrong answers are deterministic: refused at once, not retried by the client.
        (Fault("far_row", times=None), 1, "outside the requested radius"),
        (Fault("unknown_id", times=None), 1, "which was never sent"),
        (Fault("duplicate_row", times=None), 1, "which allows one row per id"),
        # An answer trickling in is cut at the deadline.
        (
            Fault("slow_body", times=None, seconds=SLOW_BODY_PAUSE_SECONDS),
            1,
            "still arriving when the chunk's deadline passed",
        ),
    ],
    ids=[
        "persistent-503",
        "rejected-400",
        "far-row",
        "unknown-id",
        "duplicate-row",
        "slow-body",
    ],
)
def test_persistent_fault_fails_the_run_cleanly_and_the_retry_succeeds(
    fault: Fault,
    requests_per_run: int,
    reason: str,
    *,
    flow: Flow,
    server: CdsXmatchServer,
    kafka_bootstrap: str,
    fresh_database_url: str,
) -> None:
    server.faults.replace([fault])
    instance = DagsterInstance.ephemeral()
    first_tick = evaluate_sensor(flow.xmatch, instance, None)
    (request,) = first_tick.run_requests or []
    asked_before = len(server.requests)

    started = time.monotonic()
    failed = execute_request(flow.xmatch, instance, request)
    elapsed = time.monotonic() - started

    assert not failed.success
    # Bounded: never longer than the deadline, a read slice and the run's own overhead.
    assert elapsed < DEADLINE_SECONDS + READ_TIMEOUT_SECONDS + RUN_MARGIN_SECONDS
    # Retried as far as it can succeed (a 400 never can), then given up.
    assert len(server.requests) - asked_before == requests_per_run
    assert read_committed(kafka_bootstrap, flow.output) == []
    assert group_offsets(kafka_bootstrap, flow.group, flow.topic) == {0: None}
    assert _stored_matches(fresh_database_url, flow.object_ids) == 0
    ((status, error),) = query(
        fresh_database_url,
        "SELECT status, error FROM offset_range_ledger WHERE topic = :topic",
        topic=flow.topic,
    )
    assert status == "failed"
    assert reason in error

    server.faults.replace([])
    (retry,) = evaluate_sensor(flow.xmatch, instance, first_tick.cursor).run_requests or []
    assert retry.run_key == f"{flow.topic}[0]@[0,{ALERTS})#attempt2"
    assert execute_request(flow.xmatch, instance, retry).success
    _assert_exactly_once(kafka_bootstrap, flow)
    assert _stored_matches(fresh_database_url, flow.object_ids) == flow.expected_matches
