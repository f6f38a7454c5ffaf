"""Fixtures shared by the whole suite: the real data beside the project and the devstack."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# Loaded here, so that this process reads HATS metadata itself rather than through the
# helper process that keeps hats out of workers (its own test runs it in a fresh process):
# a property test opens a new catalog per example.
import hats  # noqa: F401
import pytest

from xmatch_pipeline.devtools.devstack import DevstackSettings, ensure_devstack_running

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from xmatch_pipeline.devtools.cds_server import CdsXmatchServer

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    configured = os.environ.get("XMATCH_SHARED_DATA")
    return Path(configured) if configured else PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real ZTF alerts and CDS exchange, kept outside the project (../shared/data)."""
    directory = _shared_data_dir()
    if not directory.is_dir():
        pytest.skip(f"real survey data not found at {directory} (set XMATCH_SHARED_DATA)")
    return directory


@pytest.fixture(scope="session")
def ztf_alert_files(shared_data_dir: Path) -> list[Path]:
    """Every real ZTF alert packet (.avro, one alert each), sorted for stable ids."""
    files = sorted((shared_data_dir / "ztf-alerts").rglob("*.avro"))
    if not files:
        pytest.skip(f"no .avro alerts under {shared_data_dir / 'ztf-alerts'}")
    return files


@pytest.fixture(scope="session")
def devstack() -> DevstackSettings:
    """The local Kafka broker and PostgreSQL server, started if they are not running."""
    return ensure_devstack_running()


@pytest.fixture(scope="session")
def kafka_bootstrap(devstack: DevstackSettings) -> str:
    return devstack.kafka_bootstrap_servers


@pytest.fixture(scope="session")
def database_url(devstack: DevstackSettings) -> str:
    return devstack.database_url


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Create topics with unique names so tests never see each other's messages."""
    from xmatch_pipeline_tests.pipeline_fixtures import create_topic, delete_topics

    created: list[str] = []

    def create(
        prefix: str = "test", partitions: int = 1, config: dict[str, str] | None = None
    ) -> str:
        created.append(create_topic(kafka_bootstrap, prefix, partitions, config))
        return created[-1]

    yield create
    delete_topics(kafka_bootstrap, created)


@pytest.fixture(scope="module")
def fresh_database_url(database_url: str) -> Iterator[str]:
    """A new, empty database on the devstack server for one test module, dropped afterwards."""
    from xmatch_pipeline_tests.pipeline_fixtures import fresh_database

    with fresh_database(database_url) as url:
        yield url


@pytest.fixture(scope="module")
def schema_database(fresh_database_url: str) -> Iterator[Engine]:
    """An engine on the module's fresh database, with the pipeline's schema created."""
    from sqlalchemy import create_engine

    from xmatch_pipeline.store.schema import ensure_schema

    engine = create_engine(fresh_database_url)
    ensure_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def allwise_index(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local index named ``allwise`` of the 5,440 real ALLWISE rows CDS returned."""
    from xmatch_pipeline_tests.pipeline_fixtures import build_allwise_index

    return build_allwise_index(shared_data_dir, tmp_path_factory.mktemp("allwise"))


@pytest.fixture(scope="module")
def running_cds_server(allwise_index: Path) -> Iterator[CdsXmatchServer]:
    """The local ``cds-server`` serving ``allwise_index``, for one test module."""
    from xmatch_pipeline.devtools.cds_server import CdsXmatchServer, ServedCatalogs

    with CdsXmatchServer(ServedCatalogs({"allwise": allwise_index})) as server:
        yield server


@pytest.fixture
def cds_server(running_cds_server: CdsXmatchServer) -> CdsXmatchServer:
    """The module's ``cds-server`` with no faults and an empty request log."""
    running_cds_server.set_faults([])
    running_cds_server.clear_requests()
    running_cds_server.reset_stats()
    return running_cds_server
