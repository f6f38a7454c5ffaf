"""Pipeline settings from environment variables, validated once when the code location loads.

The original step's variable names (``CONSUMER_SERVER``, ``DB_HOST``, ``STEP_ID`` …) keep
their meaning so that an existing deployment's environment carries over; settings the
original did not have are prefixed ``XMATCH_``. Every problem is collected and reported at
once, each naming the variable and what it should look like.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from xmatch_pipeline.match.catalog_configuration import (
    CatalogConfigurationError,
    ConfiguredCatalog,
    configured_catalogs,
    default_catalog,
)
from xmatch_pipeline.match.catalogs import allwise
from xmatch_pipeline.match.cds_client import (
    DEFAULT_CDS_XMATCH_URL,
    MAX_REQUESTS_IN_FLIGHT,
    CdsClientSettings,
)
from xmatch_pipeline.match.index_manifest import MANIFEST_FILE
from xmatch_pipeline.publish.dead_letter import dead_letter_topic_for
from xmatch_pipeline.read.topic_selection import topics_from_list

EngineName = Literal["cds", "local"]
OutputPrecision = Literal["double", "float32"]

MINIMUM_SENSOR_INTERVAL_SECONDS = 5


class SettingsError(ValueError):
    """One or more settings are missing or malformed; the message lists every one."""


class Secret:
    """A value that must never reach a log, run config or the UI."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class KafkaCredentials:
    """SASL_SSL with SCRAM-SHA-512, switched on as in the original by username and password."""

    username: str
    password: Secret


@dataclass(frozen=True)
class TopicSelection:
    """Which input topics to follow: a fixed list, the original's daily format, or a pattern."""

    topics: tuple[str, ...] = ()
    daily_format: str | None = None
    pattern: str | None = None


@dataclass(frozen=True)
class DatabaseSettings:
    host: str
    port: int
    user: str
    password: Secret
    name: str

    def sqlalchemy_url(self) -> str:
        """The connection URL with the password in it: hand it to SQLAlchemy, never log it."""
        return (
            f"postgresql+psycopg2://{quote(self.user, safe='')}:"
            f"{quote(self.password.reveal(), safe='')}@{self.host}:{self.port}/{self.name}"
        )

    def redacted_url(self) -> str:
        return f"postgresql://{self.user}:********@{self.host}:{self.port}/{self.name}"


@dataclass(frozen=True)
class StepSettings:
    step_id: str
    name: str
    version: str
    comments: str = ""


@dataclass(frozen=True)
class PipelineSettings:
    """Everything a micro-batch run and the lag sensor need."""

    kafka_bootstrap_servers: str
    consumer_group_id: str
    input_topics: TopicSelection
    output_topic: str
    dead_letter_topic: str
    database: DatabaseSettings
    catalogs: tuple[ConfiguredCatalog, ...]
    engine: EngineName
    cds: CdsClientSettings
    local_catalog_directories: Mapping[str, Path]
    step: StepSettings
    consumer_credentials: KafkaCredentials | None = None
    producer_credentials: KafkaCredentials | None = None
    metrics_bootstrap_servers: str | None = None
    metrics_topic: str | None = None
    metrics_credentials: KafkaCredentials | None = None
    kafka_ssl_ca_location: Path | None = None
    """The CA that signed the brokers' certificates (PEM), for a private CA on SASL_SSL;
    without it librdkafka trusts the system's CAs."""
    max_messages_per_run: int = 5_000
    chunk_messages: int = 2_000
    consume_timeout_seconds: float = 10.0
    kafka_admin_timeout_seconds: float = 5.0
    sensor_interval_seconds: int = 30
    max_run_attempts: int = 3
    output_precision: OutputPrecision = "double"
    use_match_cache: bool = True


class _Reader:
    """Reads variables and collects every problem instead of stopping at the first."""

    def __init__(self, environment: Mapping[str, str]) -> None:
        self.environment = environment
        self.problems: list[str] = []

    def text(self, name: str, example: str, default: str | None = None) -> str:
        value = self.environment.get(name, "").strip()
        if value:
            return value
        if default is not None:
            return default
        self.problems.append(f"{name} is not set: set it to e.g. {example}")
        return ""

    def optional(self, name: str) -> str | None:
        value = self.environment.get(name, "").strip()
        return value or None

    def integer(self, name: str, default: int, minimum: int = 0) -> int:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.problems.append(f"{name}={raw!r} is not a whole number")
            return default
        if value < minimum:
            self.problems.append(f"{name}={value} must be at least {minimum}")
            return default
        return value

    def number(self, name: str, default: float, minimum: float = 0.0) -> float:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            self.problems.append(f"{name}={raw!r} is not a number")
            return default
        if not value >= minimum:
            self.problems.append(f"{name}={value} must be at least {minimum}")
            return default
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.optional(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name}={raw!r} must be true or false")
        return default

    def credentials(self, prefix: str) -> KafkaCredentials | None:
        username = self.optional(f"{prefix}_KAFKA_USERNAME")
        password = self.optional(f"{prefix}_KAFKA_PASSWORD")
        if username is None and password is None:
            return None
        if username is None or password is None:
            self.problems.append(
                f"{prefix}_KAFKA_USERNAME and {prefix}_KAFKA_PASSWORD go together "
                "(SASL_SSL with SCRAM-SHA-512): set both or neither"
            )
            return None
        return KafkaCredentials(username, Secret(password))


def _ssl_ca_location(reader: _Reader, *credentials: KafkaCredentials | None) -> Path | None:
    raw = reader.optional("XMATCH_KAFKA_SSL_CA_LOCATION")
    if raw is None:
        return None
    location = Path(raw).expanduser()
    if all(credential is None for credential in credentials):
        reader.problems.append(
            f"XMATCH_KAFKA_SSL_CA_LOCATION={raw!r} is set but no Kafka credentials are: TLS is "
            "used only with SASL_SSL (set CONSUMER_KAFKA_USERNAME and _PASSWORD) or unset it"
        )
        return None
    try:
        content = location.read_text(errors="replace")
    except OSError as error:
        reader.problems.append(
            f"XMATCH_KAFKA_SSL_CA_LOCATION={raw!r} cannot be read ({error.strerror}): give "
            "the path of the CA certificate (PEM) that signed the brokers' certificates"
        )
        return None
    if "-----BEGIN CERTIFICATE-----" not in content:
        reader.problems.append(
            f"XMATCH_KAFKA_SSL_CA_LOCATION={raw!r} holds no PEM certificate ('-----BEGIN "
            "CERTIFICATE-----'): give the CA certificate that signed the brokers' certificates"
        )
        return None
    return location


def _topic_selection(reader: _Reader) -> TopicSelection:
    topics = tuple(topics_from_list(reader.optional("CONSUMER_TOPICS") or ""))
    daily_format = reader.optional("TOPIC_STRATEGY_FORMAT")
    pattern = reader.optional("XMATCH_TOPIC_PATTERN")
    chosen = [bool(topics), daily_format is not None, pattern is not None]
    if sum(chosen) != 1:
        reader.problems.append(
            "set exactly one of CONSUMER_TOPICS (e.g. ztf_20200101_programid1,ztf_20200102_"
            "programid1), TOPIC_STRATEGY_FORMAT (e.g. ztf_%s_programid1) or "
            "XMATCH_TOPIC_PATTERN (a regular expression, e.g. ^ztf_\\d{8}_programid1$)"
        )
    # A comma-separated list of formats is allowed, as read.topic_selection reads it.
    if daily_format is not None and any(
        item.count("%s") != 1 for item in topics_from_list(daily_format)
    ):
        reader.problems.append(
            f"TOPIC_STRATEGY_FORMAT={daily_format!r}: each format must contain '%s' once, "
            "where the date goes: e.g. ztf_%s_programid1 or ztf_%s_programid1,ztf_%s_programid2"
        )
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as error:
            reader.problems.append(f"XMATCH_TOPIC_PATTERN={pattern!r} is not a regex: {error}")
    return TopicSelection(topics=topics, daily_format=daily_format, pattern=pattern)


def _catalogs(reader: _Reader) -> tuple[ConfiguredCatalog, ...]:
    """The catalogs to match (``match.catalog_configuration`` checks each entry)."""
    raw = reader.optional("XMATCH_CATALOGS")
    if raw is None:
        return (default_catalog(allwise.CATALOG),)
    try:
        return configured_catalogs(json.loads(raw))
    except CatalogConfigurationError as error:
        reader.problems.extend(error.problems)
    except ValueError as error:
        reader.problems.append(
            f"XMATCH_CATALOGS is malformed (not JSON: {error}); expected e.g. "
            '[{"name": "allwise", "columns": ["AllWISE", "RAJ2000", "DEJ2000", "W1mag"], '
            '"radius_arcsec": 1.0, "selection": "best"}]'
        )
    return ()


def _local_catalogs(reader: _Reader) -> dict[str, Path]:
    raw = reader.optional("XMATCH_LOCAL_CATALOGS")
    directories: dict[str, Path] = {}
    if raw is None:
        return directories
    for item in raw.split(","):
        name, separator, directory = item.partition("=")
        if not separator or not name.strip() or not directory.strip():
            reader.problems.append(
                f"XMATCH_LOCAL_CATALOGS item {item!r} must look like NAME=DIRECTORY, "
                "e.g. allwise=/data/allwise-index"
            )
            continue
        directories[name.strip()] = Path(directory.strip())
    return directories


def load_settings(environment: Mapping[str, str]) -> PipelineSettings:
    """Build and validate the settings; raise SettingsError listing every problem."""
    reader = _Reader(environment)
    consumer_server = reader.text("CONSUMER_SERVER", "localhost:9092")
    producer_server = reader.optional("PRODUCER_SERVER")
    if producer_server is not None and consumer_server and producer_server != consumer_server:
        reader.problems.append(
            f"PRODUCER_SERVER={producer_server!r} differs from CONSUMER_SERVER="
            f"{consumer_server!r}: exactly-once commits the input offsets in the output's "
            "Kafka transaction, so both must be the same cluster (unset PRODUCER_SERVER)"
        )
    engine = reader.text("XMATCH_ENGINE", "cds", default="cds")
    if engine not in ("cds", "local"):
        reader.problems.append(f"XMATCH_ENGINE={engine!r} must be 'cds' or 'local'")
    precision = reader.text("XMATCH_OUTPUT_PRECISION", "double", default="double")
    if precision not in ("double", "float32"):
        reader.problems.append(
            f"XMATCH_OUTPUT_PRECISION={precision!r} must be 'double' (default, lossless) or "
            "'float32' (the original schema's 32-bit floats, for strict compatibility)"
        )
    db_engine = reader.text("DB_ENGINE", "postgresql", default="postgresql")
    if db_engine not in ("postgres", "postgresql"):
        reader.problems.append(f"DB_ENGINE={db_engine!r}: only postgresql is supported")
    database = DatabaseSettings(
        host=reader.text("DB_HOST", "localhost"),
        port=reader.integer("DB_PORT", 5432, minimum=1),
        user=reader.text("DB_USER", "xmatch"),
        password=Secret(reader.text("DB_PASSWORD", "a password", default="")),
        name=reader.text("DB_NAME", "xmatch"),
    )
    output_topic = reader.text("PRODUCER_TOPIC", "xmatch")
    cds_url = reader.text("XMATCH_CDS_URL", DEFAULT_CDS_XMATCH_URL, default=DEFAULT_CDS_XMATCH_URL)
    if not cds_url.startswith(("http://", "https://")):
        reader.problems.append(f"XMATCH_CDS_URL={cds_url!r} must be an http(s):// URL")
        cds_url = DEFAULT_CDS_XMATCH_URL
    defaults = CdsClientSettings()
    max_in_flight = reader.integer("XMATCH_CDS_MAX_IN_FLIGHT", defaults.max_in_flight, 1)
    if max_in_flight > MAX_REQUESTS_IN_FLIGHT:
        reader.problems.append(
            f"XMATCH_CDS_MAX_IN_FLIGHT={max_in_flight} must be at most "
            f"{MAX_REQUESTS_IN_FLIGHT}: CDS bans addresses that run more jobs in parallel "
            "(it asks for one or two)"
        )
        max_in_flight = defaults.max_in_flight
    cds = CdsClientSettings(
        url=cds_url,
        # One limit for the whole fleet (services.py holds it in the pipeline database);
        # a run's own chunks may use as many requests at once.
        max_in_flight=max_in_flight,
        chunk_rows=reader.integer("XMATCH_CDS_CHUNK_ROWS", defaults.chunk_rows, minimum=1),
        connect_timeout_seconds=reader.number(
            "XMATCH_CDS_CONNECT_TIMEOUT", defaults.connect_timeout_seconds, minimum=0.1
        ),
        read_timeout_seconds=reader.number(
            "XMATCH_CDS_READ_TIMEOUT", defaults.read_timeout_seconds, minimum=0.1
        ),
        deadline_seconds=reader.number(
            "XMATCH_CDS_DEADLINE", defaults.deadline_seconds, minimum=1.0
        ),
        # The original's RETRIES counted retries after the first attempt.
        max_attempts=reader.integer("RETRIES", defaults.max_attempts - 1, minimum=0) + 1,
        backoff_initial_seconds=reader.number(
            "RETRY_INTERVAL", defaults.backoff_initial_seconds, minimum=0.01
        ),
    )
    local_directories = _local_catalogs(reader)
    catalogs = _catalogs(reader)
    if engine == "local":
        missing = [c.name for c in catalogs if c.name not in local_directories]
        if missing:
            reader.problems.append(
                f"XMATCH_ENGINE=local needs an index for every catalog; missing {missing}: "
                "build one with 'xmatch-pipeline catalog build' and set "
                "XMATCH_LOCAL_CATALOGS=allwise=/path/to/index"
            )
        # Checked here so that a wrong path stops the code location, not every run.
        for name, directory in local_directories.items():
            if not (directory / MANIFEST_FILE).is_file():
                reader.problems.append(
                    f"XMATCH_LOCAL_CATALOGS {name}={directory}: no catalog index there "
                    f"({MANIFEST_FILE} missing); build one with 'xmatch-pipeline catalog build'"
                )
    sensor_interval = reader.integer(
        "XMATCH_SENSOR_INTERVAL_SECONDS", 30, minimum=MINIMUM_SENSOR_INTERVAL_SECONDS
    )
    consumer_credentials = reader.credentials("CONSUMER")
    producer_credentials = reader.credentials("PRODUCER")
    metrics_credentials = reader.credentials("METRICS")
    ca_location = _ssl_ca_location(
        reader, consumer_credentials, producer_credentials, metrics_credentials
    )
    max_messages = reader.integer(
        "XMATCH_MAX_MESSAGES_PER_RUN", reader.integer("CONSUME_MESSAGES", 5_000, 1), 1
    )
    settings = PipelineSettings(
        kafka_bootstrap_servers=consumer_server,
        consumer_group_id=reader.text("CONSUMER_GROUP_ID", "xmatch"),
        input_topics=_topic_selection(reader),
        output_topic=output_topic,
        dead_letter_topic=dead_letter_topic_for(
            output_topic, reader.optional("XMATCH_DEAD_LETTER_TOPIC")
        ),
        database=database,
        catalogs=catalogs,
        engine="local" if engine == "local" else "cds",
        cds=cds,
        local_catalog_directories=local_directories,
        step=StepSettings(
            step_id=reader.text("STEP_ID", "xmatch", default="xmatch"),
            name=reader.text("STEP_NAME", "xmatch", default="xmatch"),
            version=reader.text("STEP_VERSION", "1.0.0", default="dev"),
            comments=reader.text("STEP_COMMENTS", "", default=""),
        ),
        consumer_credentials=consumer_credentials,
        producer_credentials=producer_credentials,
        metrics_bootstrap_servers=reader.optional("METRICS_HOST"),
        metrics_topic=reader.optional("METRICS_TOPIC"),
        metrics_credentials=metrics_credentials,
        kafka_ssl_ca_location=ca_location,
        max_messages_per_run=max_messages,
        chunk_messages=reader.integer("XMATCH_CHUNK_MESSAGES", 2_000, minimum=1),
        consume_timeout_seconds=reader.number("CONSUME_TIMEOUT", 10.0, minimum=0.1),
        kafka_admin_timeout_seconds=reader.number("XMATCH_KAFKA_TIMEOUT", 5.0, minimum=0.1),
        sensor_interval_seconds=sensor_interval,
        max_run_attempts=reader.integer("XMATCH_MAX_RUN_ATTEMPTS", 3, minimum=1),
        output_precision="float32" if precision == "float32" else "double",
        # Worth it where every call is remote (CDS); a local index is faster than the lookup.
        use_match_cache=reader.boolean("XMATCH_MATCH_CACHE", engine == "cds"),
    )
    if settings.metrics_topic is not None and settings.metrics_bootstrap_servers is None:
        settings = _replace_metrics_host(settings, consumer_server)
    if reader.problems:
        raise SettingsError(
            "xmatch_pipeline settings are not valid:\n- " + "\n- ".join(reader.problems)
        )
    return settings


def _replace_metrics_host(settings: PipelineSettings, host: str) -> PipelineSettings:
    from dataclasses import replace

    return replace(settings, metrics_bootstrap_servers=host)
