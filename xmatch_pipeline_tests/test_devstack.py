"""The devstack on the real services: transactions on Kafka and PostgreSQL, the settings that
``status`` prints, idempotent ``up`` and the clear errors for missing prerequisites."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from xmatch_pipeline.cli.devstack import app
from xmatch_pipeline.devtools.devstack import (
    DevstackSettings,
    PortInUseError,
    PrerequisiteMissingError,
    devstack_settings,
    ensure_devstack_running,
)
from xmatch_pipeline.devtools.devstack.java_runtime import find_java
from xmatch_pipeline.devtools.devstack.kafka_jars import ensure_kafka_jars
from xmatch_pipeline.devtools.devstack.kafka_server import kafka_pid
from xmatch_pipeline.devtools.devstack.ports import ensure_port_free
from xmatch_pipeline.devtools.devstack.postgres_server import (
    find_postgres_bin,
    postgres_pid,
    preflight_postgres,
)
from xmatch_pipeline.devtools.devstack.stack import prepare_devstack_directory
from xmatch_pipeline_tests.pipeline_fixtures import read_committed


@pytest.fixture
def engine(database_url: str):
    engine = create_engine(database_url, poolclass=NullPool)
    yield engine
    engine.dispose()


def test_kafka_read_committed_consumer_sees_committed_not_aborted(kafka_bootstrap, new_topic):
    topic = new_topic("devstack")
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"test-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"aborted")
    producer.abort_transaction(30)
    producer.begin_transaction()
    for index in range(3):
        producer.produce(topic, value=f"committed-{index}".encode())
    producer.commit_transaction(30)

    # The stable end passes 4 once the commit marker is written (three messages and the
    # marker; the aborted message and its marker may or may not have reached the log first).
    assert [m.value for m in read_committed(kafka_bootstrap, topic, expected_end=4)] == [
        b"committed-0",
        b"committed-1",
        b"committed-2",
    ]


def test_postgres_commit_keeps_and_rollback_discards(engine: Engine):
    table = f"devstack_check_{uuid.uuid4().hex[:12]}"
    with engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE {table} (id bigint PRIMARY KEY)"))
    try:
        with engine.connect() as connection:
            transaction = connection.begin()
            connection.execute(text(f"INSERT INTO {table} VALUES (1), (2)"))
            transaction.rollback()
        with engine.begin() as connection:
            connection.execute(text(f"INSERT INTO {table} VALUES (9007199254740993)"))
        with engine.connect() as connection:
            rows = connection.execute(text(f"SELECT id FROM {table}")).scalars().all()
        assert rows == [9007199254740993]
    finally:
        with engine.begin() as connection:
            connection.execute(text(f"DROP TABLE {table}"))


def test_postgres_btree_gist_exclusion_constraint_works(engine: Engine):
    """The store needs exclusion constraints mixing equality and range overlap."""
    with engine.connect() as connection:
        transaction = connection.begin()
        connection.execute(text("CREATE EXTENSION IF NOT EXISTS btree_gist"))
        connection.execute(
            text(
                "CREATE TEMPORARY TABLE booking (room int, during int8range, "
                "EXCLUDE USING gist (room WITH =, during WITH &&))"
            )
        )
        connection.execute(text("INSERT INTO booking VALUES (1, '[1,5)'), (2, '[1,5)')"))
        with pytest.raises(Exception, match="conflicting key value"):
            connection.execute(text("INSERT INTO booking VALUES (1, '[4,8)')"))
        transaction.rollback()


def _parse_status(output: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in output.splitlines() if line and line[0] != "#"]
    return dict(pairs)


def test_status_prints_settings_that_reach_both_services(devstack: DevstackSettings):
    result = CliRunner().invoke(app, ["status"])

    assert result.exit_code == 0, result.output
    printed = _parse_status(result.stdout)
    assert printed["KAFKA_BOOTSTRAP_SERVERS"] == devstack.kafka_bootstrap_servers
    assert (
        printed["CONSUMER_SERVER"] == printed["PRODUCER_SERVER"] == devstack.kafka_bootstrap_servers
    )
    assert printed["DB_ENGINE"] == "postgresql"
    expected_url = (
        f"postgresql+psycopg2://{printed['DB_USER']}:{printed['DB_PASSWORD']}"
        f"@{printed['DB_HOST']}:{printed['DB_PORT']}/{printed['DB_NAME']}"
    )
    assert printed["DATABASE_URL"] == expected_url
    assert printed["DAGSTER_POSTGRES_URL"] == devstack.dagster_postgres_url
    assert printed["DAGSTER_PG_DB"] == "dagster"
    for url, database in (
        (printed["DATABASE_URL"], "xmatch"),
        (printed["DAGSTER_POSTGRES_URL"], "dagster"),
    ):
        engine = create_engine(url, poolclass=NullPool)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT current_database()")).scalar() == database
        engine.dispose()
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient({"bootstrap.servers": printed["CONSUMER_SERVER"]}).list_topics(
        timeout=10
    )
    assert metadata.brokers


def test_status_prints_celery_urls_that_reach_our_redis(devstack: DevstackSettings):
    import redis

    from xmatch_pipeline.devtools.devstack.redis_server import redis_pid

    result = CliRunner().invoke(app, ["status"])

    assert result.exit_code == 0, result.output
    printed = _parse_status(result.stdout)
    assert printed["CELERY_BROKER_URL"] == f"redis://127.0.0.1:{devstack.redis_port}/0"
    assert printed["CELERY_RESULT_BACKEND"] == f"redis://127.0.0.1:{devstack.redis_port}/1"
    assert "# redis: up" in result.output
    # Ours, on its own port (not a system Redis on 6379), answering both databases.
    assert redis_pid(devstack) is not None
    for url in (printed["CELERY_BROKER_URL"], printed["CELERY_RESULT_BACKEND"]):
        client = redis.Redis.from_url(url, socket_timeout=5)
        assert client.ping()
        port: dict[str, str] = client.config_get("port")  # type: ignore[assignment]
        assert port["port"] == str(devstack.redis_port)
        client.close()


def test_missing_redis_without_root_names_the_package(monkeypatch):
    from xmatch_pipeline.devtools.devstack import redis_server

    monkeypatch.setattr(redis_server, "_installed_binary", lambda: None)
    monkeypatch.setattr("os.geteuid", lambda: 1000)

    with pytest.raises(PrerequisiteMissingError, match="apt-get install redis-server"):
        redis_server.find_redis_server()


def test_status_quiet_prints_nothing_and_exits_zero(devstack: DevstackSettings):
    result = CliRunner().invoke(app, ["status", "--quiet"])

    assert result.exit_code == 0
    assert result.output == ""


def test_status_quiet_exits_one_when_nothing_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("XMATCH_DEVSTACK_DIR", str(tmp_path))
    monkeypatch.setenv("XMATCH_DEVSTACK_KAFKA_PORT", str(_free_port()))
    monkeypatch.setenv("XMATCH_DEVSTACK_POSTGRES_PORT", str(_free_port()))
    monkeypatch.setenv("XMATCH_DEVSTACK_REDIS_PORT", str(_free_port()))

    result = CliRunner().invoke(app, ["status", "--quiet"])

    assert result.exit_code == 1
    assert result.output == ""


def test_up_again_is_idempotent(devstack: DevstackSettings):
    kafka_before, postgres_before = kafka_pid(devstack), postgres_pid(devstack)
    assert kafka_before is not None
    assert postgres_before is not None

    assert ensure_devstack_running() == devstack
    result = CliRunner().invoke(app, ["up"])

    assert result.exit_code == 0, result.output
    assert (kafka_pid(devstack), postgres_pid(devstack)) == (kafka_before, postgres_before)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_port_held_by_another_program_gives_clear_error(tmp_path, monkeypatch):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        monkeypatch.setenv("XMATCH_DEVSTACK_DIR", str(tmp_path))
        monkeypatch.setenv("XMATCH_DEVSTACK_KAFKA_PORT", str(port))
        settings = devstack_settings()
        assert settings.kafka_port == port
        with pytest.raises(PortInUseError) as raised:
            ensure_port_free(
                settings.kafka_host,
                settings.kafka_port,
                "Kafka broker",
                "XMATCH_DEVSTACK_KAFKA_PORT",
            )
        message = str(raised.value)
        assert f"127.0.0.1:{port}" in message
        assert "another program" in message
        assert "XMATCH_DEVSTACK_KAFKA_PORT" in message
    finally:
        holder.close()
    ensure_port_free("127.0.0.1", port, "Kafka broker", "XMATCH_DEVSTACK_KAFKA_PORT")


def test_missing_java_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)

    with pytest.raises(PrerequisiteMissingError, match="apt-get install openjdk-17-jre-headless"):
        find_java()


def test_missing_maven_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(PrerequisiteMissingError, match="apt-get install maven"):
        ensure_kafka_jars(tmp_path / "kafka" / "libs")
    assert not (tmp_path / "kafka" / "libs").exists()


def test_missing_postgres_binaries_say_how_to_install_them(tmp_path, monkeypatch):
    monkeypatch.setenv("XMATCH_DEVSTACK_POSTGRES_BIN", str(tmp_path / "nowhere"))

    with pytest.raises(
        PrerequisiteMissingError, match="apt-get install postgresql postgresql-contrib"
    ):
        find_postgres_bin()


def test_unwritable_devstack_folder_is_reported(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    with pytest.raises(PrerequisiteMissingError, match="XMATCH_DEVSTACK_DIR"):
        prepare_devstack_directory(blocker / "devstack")


def test_settings_follow_environment_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("XMATCH_DEVSTACK_DIR", str(tmp_path))
    monkeypatch.setenv("XMATCH_DEVSTACK_KAFKA_PORT", "29092")
    monkeypatch.setenv("XMATCH_DEVSTACK_POSTGRES_PORT", "25432")
    monkeypatch.setenv("XMATCH_DEVSTACK_REDIS_PORT", "26379")

    settings = devstack_settings()

    assert settings.devstack_dir == tmp_path.resolve()
    assert settings.kafka_bootstrap_servers == "127.0.0.1:29092"
    assert settings.kafka_controller_port == 29093
    assert settings.database_url == "postgresql+psycopg2://xmatch:xmatch@127.0.0.1:25432/xmatch"
    assert settings.dagster_postgres_url.endswith("@127.0.0.1:25432/dagster")
    assert settings.celery_broker_url == "redis://127.0.0.1:26379/0"
    assert settings.celery_result_backend_url == "redis://127.0.0.1:26379/1"


def test_bad_port_in_environment_is_named(monkeypatch):
    monkeypatch.setenv("XMATCH_DEVSTACK_POSTGRES_PORT", "fifteen")

    with pytest.raises(ValueError, match="XMATCH_DEVSTACK_POSTGRES_PORT='fifteen'"):
        devstack_settings()


@pytest.mark.skipif(os.geteuid() != 0, reason="only as root does PostgreSQL run as another account")
def test_folder_the_postgres_account_cannot_enter_is_named(monkeypatch):
    # pytest's own tmp_path sits under a private folder already; this one is open but for one.
    with tempfile.TemporaryDirectory(prefix="devstack-reach-") as open_folder:
        Path(open_folder).chmod(0o755)
        private = Path(open_folder) / "private"
        private.mkdir(mode=0o700)
        monkeypatch.setenv("XMATCH_DEVSTACK_DIR", str(private / "devstack"))
        monkeypatch.setenv("XMATCH_DEVSTACK_POSTGRES_PORT", str(_free_port()))

        with pytest.raises(PrerequisiteMissingError, match=f"cannot enter {private} ") as raised:
            preflight_postgres(devstack_settings())
    assert "XMATCH_DEVSTACK_DIR" in str(raised.value)


def test_cluster_ids_never_look_like_an_option():
    """One id in 64 would start with '-', which Kafka's format tool rejects as an option."""
    from xmatch_pipeline.devtools.devstack.kafka_server import _cluster_id

    ids = [_cluster_id() for _ in range(2000)]

    assert not [cluster_id for cluster_id in ids if cluster_id.startswith("-")]
    assert {len(cluster_id) for cluster_id in ids} == {22}
