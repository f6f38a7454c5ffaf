"""Where the devstack lives and how to reach it, read from the environment without starting it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEVSTACK_DIR_ENV = "XMATCH_DEVSTACK_DIR"
KAFKA_PORT_ENV = "XMATCH_DEVSTACK_KAFKA_PORT"
KAFKA_CONTROLLER_PORT_ENV = "XMATCH_DEVSTACK_KAFKA_CONTROLLER_PORT"
KAFKA_SASL_PORT_ENV = "XMATCH_DEVSTACK_KAFKA_SASL_PORT"
POSTGRES_PORT_ENV = "XMATCH_DEVSTACK_POSTGRES_PORT"
REDIS_PORT_ENV = "XMATCH_DEVSTACK_REDIS_PORT"

DEFAULT_KAFKA_PORT = 19092
DEFAULT_POSTGRES_PORT = 15432
DEFAULT_REDIS_PORT = 16379
LOOPBACK_HOST = "127.0.0.1"

#: A dev stack on loopback only: fixed, well-known credentials keep the settings derivable
#: without reading anything the stack wrote.
POSTGRES_USER = "xmatch"
POSTGRES_PASSWORD = "xmatch"
PIPELINE_DATABASE = "xmatch"
DAGSTER_DATABASE = "dagster"
#: Redis databases: Celery's broker (the run queue) and its result backend (task states that
#: run monitoring reads), apart so that flushing one never loses the other.
BROKER_REDIS_DATABASE = 0
RESULT_REDIS_DATABASE = 1

#: The SCRAM-SHA-512 user the devstack creates on its SASL_SSL listener, with the ACLs a
#: pipeline needs on the demo's names (see ``kafka_security``).
KAFKA_SASL_USER = "xmatch"
KAFKA_SASL_PASSWORD = "xmatch-devstack"


@dataclass(frozen=True)
class DevstackSettings:
    """How to reach the devstack's Kafka broker, PostgreSQL server and Redis (Celery's broker)."""

    kafka_host: str
    kafka_port: int
    kafka_controller_port: int
    kafka_sasl_port: int
    postgres_host: str
    postgres_port: int
    postgres_user: str
    postgres_password: str
    postgres_database: str
    dagster_database: str
    devstack_dir: Path
    redis_host: str = LOOPBACK_HOST
    redis_port: int = DEFAULT_REDIS_PORT

    kafka_bootstrap_servers: str = field(init=False)
    kafka_sasl_bootstrap_servers: str = field(init=False)
    """The SASL_SSL listener (SCRAM-SHA-512, the devstack's own CA): the PLAINTEXT one's
    anonymous clients are super users, this one's users have only the ACLs granted."""
    kafka_ca_file: Path = field(init=False)
    """The CA certificate that signed the SASL_SSL listener's certificate (PEM)."""
    database_url: str = field(init=False)
    """SQLAlchemy URL of the pipeline database."""
    dagster_postgres_url: str = field(init=False)
    """Dagster's run storage database. The driver is explicit: SQLAlchemy 2.1 (which Dagster
    hands the URL to) no longer picks psycopg2 for a bare ``postgresql://``."""
    celery_broker_url: str = field(init=False)
    """The run queue the run launcher sends runs to and ``xmatch-pipeline worker`` takes them
    from."""
    celery_result_backend_url: str = field(init=False)
    """Where workers record each run's task state, which run monitoring reads."""

    def __post_init__(self) -> None:
        credentials = f"{self.postgres_user}:{self.postgres_password}"
        server = f"{self.postgres_host}:{self.postgres_port}"
        derived = {
            "kafka_bootstrap_servers": f"{self.kafka_host}:{self.kafka_port}",
            "kafka_sasl_bootstrap_servers": f"{self.kafka_host}:{self.kafka_sasl_port}",
            "kafka_ca_file": self.devstack_dir / "kafka" / "tls" / "ca.pem",
            "database_url": f"postgresql+psycopg2://{credentials}@{server}/{self.postgres_database}",
            "dagster_postgres_url": (
                f"postgresql+psycopg2://{credentials}@{server}/{self.dagster_database}"
            ),
            "celery_broker_url": self.redis_url(BROKER_REDIS_DATABASE),
            "celery_result_backend_url": self.redis_url(RESULT_REDIS_DATABASE),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    def redis_url(self, database: int) -> str:
        return f"redis://{self.redis_host}:{self.redis_port}/{database}"

    def as_environment(self) -> dict[str, str]:
        """The settings as environment variables: this project's names and the original step's."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "DATABASE_URL": self.database_url,
            "DAGSTER_POSTGRES_URL": self.dagster_postgres_url,
            "CONSUMER_SERVER": self.kafka_bootstrap_servers,
            "PRODUCER_SERVER": self.kafka_bootstrap_servers,
            "DB_ENGINE": "postgresql",
            "DB_HOST": self.postgres_host,
            "DB_PORT": str(self.postgres_port),
            "DB_USER": self.postgres_user,
            "DB_PASSWORD": self.postgres_password,
            "DB_NAME": self.postgres_database,
            # The variables dagster.yaml reads for its run storage.
            "DAGSTER_PG_HOST": self.postgres_host,
            "DAGSTER_PG_PORT": str(self.postgres_port),
            "DAGSTER_PG_USER": self.postgres_user,
            "DAGSTER_PG_PASSWORD": self.postgres_password,
            "DAGSTER_PG_DB": self.dagster_database,
            # The variables dagster.yaml's run launcher and the workers read.
            "CELERY_BROKER_URL": self.celery_broker_url,
            "CELERY_RESULT_BACKEND": self.celery_result_backend_url,
            "XMATCH_DEVSTACK_DIR": str(self.devstack_dir),
            # The SASL_SSL listener, under names the pipeline does not read: exporting them
            # leaves the pipeline on PLAINTEXT. To use it, set CONSUMER_SERVER to the address,
            # CONSUMER_KAFKA_USERNAME/PASSWORD and XMATCH_KAFKA_SSL_CA_LOCATION to the CA.
            "KAFKA_SASL_SSL_BOOTSTRAP_SERVERS": self.kafka_sasl_bootstrap_servers,
            "KAFKA_SSL_CA_LOCATION": str(self.kafka_ca_file),
            "KAFKA_SASL_USERNAME": KAFKA_SASL_USER,
            "KAFKA_SASL_PASSWORD": KAFKA_SASL_PASSWORD,
        }


def project_root() -> Path:
    """The checkout this package runs from, else the nearest folder above the working directory
    holding a ``pyproject.toml``, else the working directory."""
    package_checkout = Path(__file__).resolve().parents[3]
    if (package_checkout / "pyproject.toml").is_file():
        return package_checkout
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return here


def _port_from_environment(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a port number (1-65535)") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{name}={raw!r} is not a port number (1-65535)")
    return port


def devstack_settings() -> DevstackSettings:
    """The devstack's settings from the environment and defaults; starts nothing."""
    configured_dir = os.environ.get(DEVSTACK_DIR_ENV)
    devstack_dir = (
        Path(configured_dir).expanduser().resolve()
        if configured_dir
        else project_root() / ".devstack"
    )
    kafka_port = _port_from_environment(KAFKA_PORT_ENV, DEFAULT_KAFKA_PORT)
    return DevstackSettings(
        kafka_host=LOOPBACK_HOST,
        kafka_port=kafka_port,
        kafka_controller_port=_port_from_environment(KAFKA_CONTROLLER_PORT_ENV, kafka_port + 1),
        kafka_sasl_port=_port_from_environment(KAFKA_SASL_PORT_ENV, kafka_port + 2),
        postgres_host=LOOPBACK_HOST,
        postgres_port=_port_from_environment(POSTGRES_PORT_ENV, DEFAULT_POSTGRES_PORT),
        postgres_user=POSTGRES_USER,
        postgres_password=POSTGRES_PASSWORD,
        postgres_database=PIPELINE_DATABASE,
        dagster_database=DAGSTER_DATABASE,
        devstack_dir=devstack_dir,
        redis_port=_port_from_environment(REDIS_PORT_ENV, DEFAULT_REDIS_PORT),
    )
