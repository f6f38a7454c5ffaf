"""Fixtures shared by the whole suite: the real data beside the project and the devstack."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from xmatch_pipeline.devstack import DevstackSettings, ensure_devstack_running

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


def _wait_until_visible(admin: Any, topic: str, partitions: int) -> None:
    """A created topic reaches the broker's metadata a moment later; tests need it there."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=5).topics.get(topic)
        if (
            metadata is not None
            and metadata.error is None
            and len(metadata.partitions) == partitions
            and all(p.leader >= 0 for p in metadata.partitions.values())
        ):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topic {topic} did not appear in the broker's metadata within 30 s")


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Create topics with unique names so tests never see each other's messages."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def create(prefix: str = "test", partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        futures = admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=30)
        futures[name].result(timeout=30)
        created.append(name)
        _wait_until_visible(admin, name, partitions)
        return name

    yield create
    if created:
        admin.delete_topics(created, operation_timeout=30)


@pytest.fixture(scope="module")
def fresh_database_url(database_url: str) -> Iterator[str]:
    """A new, empty database on the devstack server for one test module, dropped afterwards."""
    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.pool import NullPool

    name = f"xmatch_test_{uuid.uuid4().hex[:16]}"
    server = create_engine(database_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with server.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with server.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()
