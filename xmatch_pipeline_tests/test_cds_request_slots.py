"""One limit on CDS across the fleet: ``XMATCH_CDS_MAX_IN_FLIGHT`` slots in PostgreSQL.

Clients with sessions (and database connections) of their own stand for separate
processes: advisory locks are per session, so to PostgreSQL they are. The local
``cds-server`` answers slowly (a ``delay`` fault on every request) so that requests
overlap, and reports the most it ever answered at once (``/_stats``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import requests
from sqlalchemy import Engine, create_engine

from xmatch_pipeline.devtools.cds_server import CdsXmatchServer
from xmatch_pipeline.devtools.cds_server.faults import Fault
from xmatch_pipeline.match.catalogs import allwise
from xmatch_pipeline.match.cds.client import CdsClientSettings, CdsXmatchClient
from xmatch_pipeline.match.cds.session import CdsSlotTimeoutError, SlotLimitedSession
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.settings import load_settings
from xmatch_pipeline.store.request_slots import RequestSlots, SlotWaitTimeoutError, slot_keys
from xmatch_pipeline.warm_services import warm_services
from xmatch_pipeline_tests.pipeline_fixtures import (
    pipeline_environment,
    produce_values,
    read_committed,
    small_stream,
    unique_group,
)

pytestmark = pytest.mark.timeout(180)

SLOW_ANSWER_SECONDS = 0.4


@pytest.fixture
def engines(database_url: str) -> Iterator[Callable[[], Engine]]:
    """Engines of their own (one per simulated process), disposed after the test."""
    made: list[Engine] = []

    def make() -> Engine:
        made.append(create_engine(database_url, pool_size=2))
        return made[-1]

    yield make
    for engine in made:
        engine.dispose()


def _positions(count: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": range(count),
            "ra": [10.0 + 0.01 * number for number in range(count)],
            "dec": [-5.0] * count,
        }
    )


def _slot_limited_client(
    server: CdsXmatchServer, engine: Engine, limit: int, *, chunk_rows: int = 50_000
) -> CdsXmatchClient:
    slots = RequestSlots(engine, f"test-{server.url}", limit)
    settings = CdsClientSettings(
        url=server.url, chunk_rows=chunk_rows, max_in_flight=limit, deadline_seconds=60
    )
    return CdsXmatchClient(settings, session_factory=lambda: SlotLimitedSession(slots, 60))


@pytest.mark.parametrize("limit", [1, 2])
def test_concurrent_clients_never_exceed_the_fleet_limit(
    limit: int, cds_server: CdsXmatchServer, engines: Callable[[], Engine]
) -> None:
    cds_server.set_faults([Fault("delay", times=None, seconds=SLOW_ANSWER_SECONDS)])
    # Four "processes", each with two chunks it would send in parallel on its own.
    clients = [_slot_limited_client(cds_server, engines(), limit, chunk_rows=3) for _ in range(4)]
    failures: list[BaseException] = []

    def crossmatch(client: CdsXmatchClient) -> None:
        try:
            client.crossmatch(_positions(6), allwise.ALLWISE_SPEC)
        except BaseException as error:  # collected: the assertion below names it
            failures.append(error)

    threads = [threading.Thread(target=crossmatch, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    assert failures == []
    assert len(cds_server.requests) == 8
    stats = requests.get(f"{cds_server.base_url}/_stats", timeout=5).json()
    # Exactly the limit: never above it, and the test did make requests overlap.
    assert stats == {"in_flight": 0, "peak_in_flight": limit}


CLIENT_PROCESS = textwrap.dedent(
    """
    import sys
    import pandas as pd
    from sqlalchemy import create_engine
    from xmatch_pipeline.match.catalogs import allwise
    from xmatch_pipeline.match.cds.client import CdsClientSettings, CdsXmatchClient
    from xmatch_pipeline.match.cds.session import SlotLimitedSession
    from xmatch_pipeline.store.request_slots import RequestSlots

    database_url, service, url, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    slots = RequestSlots(create_engine(database_url), service, limit)
    client = CdsXmatchClient(
        CdsClientSettings(url=url, chunk_rows=2, max_in_flight=limit),
        session_factory=lambda: SlotLimitedSession(slots, 60),
    )
    positions = pd.DataFrame({"id": range(4), "ra": [20.0, 20.1, 20.2, 20.3], "dec": [1.0] * 4})
    client.crossmatch(positions, allwise.ALLWISE_SPEC)
    """
)


@pytest.mark.parametrize("limit", [1, 2])
def test_concurrent_processes_never_exceed_the_fleet_limit(
    limit: int, cds_server: CdsXmatchServer, database_url: str
) -> None:
    cds_server.set_faults([Fault("delay", times=None, seconds=SLOW_ANSWER_SECONDS)])
    service = f"processes-{unique_group()}"
    command = [sys.executable, "-c", CLIENT_PROCESS, database_url, service, cds_server.url]
    processes = [subprocess.Popen([*command, str(limit)]) for _ in range(3)]
    assert [process.wait(timeout=120) for process in processes] == [0, 0, 0]
    assert len(cds_server.requests) == 6
    assert cds_server.stats().peak_in_flight == limit


def test_without_slots_the_same_clients_do_overlap(cds_server: CdsXmatchServer) -> None:
    """The control for the test above: the server does see parallel requests when nothing
    limits them across clients."""
    cds_server.set_faults([Fault("delay", times=None, seconds=SLOW_ANSWER_SECONDS)])
    clients = [CdsXmatchClient(CdsClientSettings(url=cds_server.url)) for _ in range(3)]
    threads = [
        threading.Thread(target=client.crossmatch, args=(_positions(2), allwise.ALLWISE_SPEC))
        for client in clients
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cds_server.stats().peak_in_flight >= 2


HOLDER = textwrap.dedent(
    """
    import sys, time
    from sqlalchemy import create_engine
    from xmatch_pipeline.store.request_slots import RequestSlots
    slots = RequestSlots(create_engine(sys.argv[1]), sys.argv[2], 1)
    with slots.slot(10):
        print("holding", flush=True)
        time.sleep(600)
    """
)


def test_a_killed_slot_holder_frees_its_slot(
    database_url: str, engines: Callable[[], Engine], tmp_path: Path
) -> None:
    service = f"killed-holder-{unique_group()}"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, database_url, service],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        slots = RequestSlots(engines(), service, 1)
        with pytest.raises(SlotWaitTimeoutError) as refused, slots.slot(0.3):
            pass
        message = str(refused.value)
        assert f"all 1 request slot(s) for {service} stayed taken for 0.3 s" in message
        assert "server pid" in message  # names the holder
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        with slots.slot(15) as number:
            assert number == 0
        assert slots.holders() == []
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_full_fleet_fails_the_cds_request_with_the_setting_named(
    cds_server: CdsXmatchServer, engines: Callable[[], Engine]
) -> None:
    engine = engines()
    service = f"test-{cds_server.url}"
    slots = RequestSlots(engine, service, 1)
    client = CdsXmatchClient(
        CdsClientSettings(url=cds_server.url, deadline_seconds=5),
        session_factory=lambda: SlotLimitedSession(slots, 0.3),
    )
    with (
        RequestSlots(engines(), service, 1).slot(1),
        pytest.raises(CdsSlotTimeoutError, match="XMATCH_CDS_MAX_IN_FLIGHT=1"),
    ):
        client.crossmatch(_positions(2), allwise.ALLWISE_SPEC)
    assert cds_server.requests == []
    # The slot is back: the same client goes through, and no slot stays taken.
    client.crossmatch(_positions(2), allwise.ALLWISE_SPEC)
    assert len(cds_server.requests) == 1
    assert slots.holders() == []
    client.close()


def test_slot_keys_differ_per_service_and_slot() -> None:
    keys = slot_keys("cds.example:443", 4) + slot_keys("other.example:443", 4)
    assert len(set(keys)) == 8
    assert slot_keys("cds.example:443", 2) == slot_keys("cds.example:443", 4)[:2]


def test_concurrent_runs_share_one_cds_slot(
    *,
    shared_data_dir: Path,
    tmp_path: Path,
    cds_server: CdsXmatchServer,
    kafka_bootstrap: str,
    fresh_database_url: str,
    new_topic: Callable[..., str],
) -> None:
    """Two live runs on two partitions at once, with ``XMATCH_CDS_MAX_IN_FLIGHT=1`` and two
    chunks per run: CDS never sees two requests at once, and both runs commit."""
    stream = small_stream(shared_data_dir, tmp_path)
    server = cds_server
    server.set_faults([Fault("delay", times=None, seconds=SLOW_ANSWER_SECONDS)])
    topic, output = new_topic("slots-in", partitions=2), new_topic("slots-out")
    environment = pipeline_environment(
        kafka_bootstrap=kafka_bootstrap,
        database_url=fresh_database_url,
        input_topic=topic,
        output_topic=output,
        group_id=unique_group(),
        XMATCH_ENGINE="cds",
        XMATCH_CDS_URL=server.url,
        XMATCH_MATCH_CACHE="false",
        XMATCH_CDS_MAX_IN_FLIGHT="1",
        XMATCH_CHUNK_MESSAGES="3",
    )
    produce_values(kafka_bootstrap, topic, stream.messages[:12], partitions=2)
    services = warm_services(load_settings(environment))
    failures: list[BaseException] = []

    def run(partition: int) -> None:
        try:
            services.runner().run(OffsetRange(topic, partition, 0, 6), run_id=f"slots-{partition}")
        except BaseException as error:  # collected: the assertion below names it
            failures.append(error)

    threads = [threading.Thread(target=run, args=(partition,)) for partition in (0, 1)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        server.set_faults([])
    assert failures == []
    assert len(server.requests) >= 4
    assert server.stats().peak_in_flight == 1
    assert len(read_committed(kafka_bootstrap, output)) == 12
