"""Pipeline settings: every environment variable declared once, as a field of a typed model.

Each field carries its variable's name (the alias), default, bounds and one line of doc;
the README's configuration table is generated from them (``settings_table.py``) and the
tests' list of variables too. The original step's names (``CONSUMER_SERVER``, ``DB_HOST``,
``STEP_ID`` …) keep their meaning, so an existing deployment's environment carries over;
settings the original did not have are prefixed ``XMATCH_``. The models are pydantic's,
validated from a mapping (``os.environ`` in production, a plain dict in tests). Every
problem is collected and reported at once, each naming the variable and what it should be.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticUndefined

from xmatch_pipeline.match.catalog_configuration import (
    CatalogConfigurationError,
    ConfiguredCatalog,
    configured_catalogs,
    default_catalog,
)
from xmatch_pipeline.match.catalogs import allwise
from xmatch_pipeline.match.cds.client import (
    DEFAULT_CDS_XMATCH_URL,
    MAX_REQUESTS_IN_FLIGHT,
    CdsClientSettings,
)
from xmatch_pipeline.match.local.hats_catalog import HatsFormatError, open_hats_catalog
from xmatch_pipeline.microbatch.range_checks import RangeCheckBounds
from xmatch_pipeline.publish.dead_letter import dead_letter_topic_for
from xmatch_pipeline.read.topic_selection import topics_from_list
from xmatch_pipeline.survey import Survey, TopicSurveys

EngineName = Literal["cds", "local"]
OutputPrecision = Literal["double", "float32"]

MINIMUM_SENSOR_INTERVAL_SECONDS = 5
_CDS_DEFAULTS = CdsClientSettings()


class SettingsError(ValueError):
    """One or more settings are missing or malformed; the message lists every one."""


def setting(
    name: str,
    doc: str,
    default: Any = PydanticUndefined,
    *,
    example: str | None = None,
    default_text: str | None = None,
    hint: str = "",
    validate_default: bool | None = None,
    ge: float | None = None,
    le: float | None = None,
) -> Any:
    """A field read from the variable ``name``: its doc, default and bounds in one place.

    ``example`` goes into the error when a required variable is missing, ``default_text``
    into the README when the default is computed, ``hint`` after a bound's error.
    """
    extra: dict[str, Any] = {"hint": hint}
    if example is not None:
        extra["example"] = example
    if default_text is not None:
        extra["default_text"] = default_text
    return Field(
        default,
        alias=name,
        description=doc,
        json_schema_extra=extra,
        validate_default=validate_default,
        ge=ge,
        le=le,
    )


class SettingsGroup(BaseModel):
    """Settings read from the same flat environment as their parent; frozen once loaded."""

    model_config = ConfigDict(frozen=True, extra="ignore", arbitrary_types_allowed=True)


@dataclass(frozen=True)
class KafkaCredentials:
    """SASL_SSL with SCRAM-SHA-512, switched on as in the original by username and password."""

    username: str
    password: SecretStr


class TopicSelection(SettingsGroup):
    """Which input topics to follow: a fixed list, the original's daily format, or a pattern."""

    topics: tuple[str, ...] = setting(
        "CONSUMER_TOPICS", "input topics, comma separated (one of these three)", ()
    )
    daily_format: str | None = setting(
        "TOPIC_STRATEGY_FORMAT",
        "daily topics, e.g. `ztf_%s_programid1` (UTC date `YYYYMMDD`; yesterday's and "
        "today's, tomorrow's from 23:00 UTC; a comma-separated list of formats is accepted)",
        None,
    )
    pattern: str | None = setting(
        "XMATCH_TOPIC_PATTERN", "a regular expression matched against the cluster's topics", None
    )

    @field_validator("topics", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return tuple(topics_from_list(value)) if isinstance(value, str) else value

    @field_validator("daily_format")
    @classmethod
    def _one_date_per_format(cls, value: str | None) -> str | None:
        # A comma-separated list of formats is allowed, as read.topic_selection reads it.
        if value is not None and any(item.count("%s") != 1 for item in topics_from_list(value)):
            raise ValueError(
                f"TOPIC_STRATEGY_FORMAT={value!r}: each format must contain '%s' once, where "
                "the date goes: e.g. ztf_%s_programid1 or ztf_%s_programid1,ztf_%s_programid2"
            )
        return value

    @field_validator("pattern")
    @classmethod
    def _a_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(
                    f"XMATCH_TOPIC_PATTERN={value!r} is not a regex: {error}"
                ) from None
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> TopicSelection:
        if sum([bool(self.topics), self.daily_format is not None, self.pattern is not None]) != 1:
            raise ValueError(
                "set exactly one of CONSUMER_TOPICS (e.g. ztf_20200101_programid1,ztf_20200102_"
                "programid1), TOPIC_STRATEGY_FORMAT (e.g. ztf_%s_programid1) or "
                "XMATCH_TOPIC_PATTERN (a regular expression, e.g. ^ztf_\\d{8}_programid1$)"
            )
        return self


class DatabaseSettings(SettingsGroup):
    """The pipeline's PostgreSQL, with the original's ``DB_*`` variables."""

    dialect: str = setting("DB_ENGINE", "database kind (`postgres` or `postgresql`)", "postgresql")
    host: str = setting("DB_HOST", "PostgreSQL host", example="localhost")
    port: int = setting("DB_PORT", "PostgreSQL port", 5432, ge=1, le=65535)
    user: str = setting("DB_USER", "PostgreSQL user", example="xmatch")
    password: SecretStr = setting("DB_PASSWORD", "PostgreSQL password", SecretStr(""))
    name: str = setting("DB_NAME", "PostgreSQL database", example="xmatch")

    @field_validator("dialect")
    @classmethod
    def _postgresql(cls, value: str) -> str:
        if value not in ("postgres", "postgresql"):
            raise ValueError(f"DB_ENGINE={value!r}: only postgresql is supported")
        return value

    def sqlalchemy_url(self) -> str:
        """The connection URL with the password in it: hand it to SQLAlchemy, never log it."""
        return (
            f"postgresql+psycopg2://{quote(self.user, safe='')}:"
            f"{quote(self.password.get_secret_value(), safe='')}@{self.host}:{self.port}/"
            f"{self.name}"
        )

    def redacted_url(self) -> str:
        return f"postgresql://{self.user}:********@{self.host}:{self.port}/{self.name}"


class StepSettings(SettingsGroup):
    """The ``step`` row, as the original wrote it."""

    step_id: str = setting("STEP_ID", "the `step` row's id", "xmatch")
    name: str = setting("STEP_NAME", "the `step` row's name", "xmatch")
    version: str = setting("STEP_VERSION", "the `step` row's version", "dev")
    comments: str = setting("STEP_COMMENTS", "the `step` row's comments", "")


class CdsSettings(SettingsGroup):
    """How the CDS XMatch client talks to CDS (``match.cds.client.CdsClientSettings``)."""

    url: str = setting("XMATCH_CDS_URL", "CDS XMatch sync endpoint", DEFAULT_CDS_XMATCH_URL)
    connect_timeout_seconds: float = setting(
        "XMATCH_CDS_CONNECT_TIMEOUT",
        "seconds to connect to CDS",
        _CDS_DEFAULTS.connect_timeout_seconds,
        ge=0.1,
    )
    read_timeout_seconds: float = setting(
        "XMATCH_CDS_READ_TIMEOUT",
        "seconds CDS may stay silent",
        _CDS_DEFAULTS.read_timeout_seconds,
        ge=0.1,
    )
    deadline_seconds: float = setting(
        "XMATCH_CDS_DEADLINE",
        "seconds one chunk may take, all attempts and the answer's body included",
        _CDS_DEFAULTS.deadline_seconds,
        ge=1.0,
    )
    chunk_rows: int = setting(
        "XMATCH_CDS_CHUNK_ROWS", "positions per CDS request", _CDS_DEFAULTS.chunk_rows, ge=1
    )
    max_in_flight: int = setting(
        "XMATCH_CDS_MAX_IN_FLIGHT",
        "CDS requests at once across the whole fleet (every run on every worker that shares "
        "the pipeline database; slots are PostgreSQL advisory locks, a killed process frees its "
        "slot). A run sends its own chunks in parallel up to the same limit; each attempt "
        "(`RETRIES`) takes a slot of its own, released during the backoff; waiting for a slot "
        "counts against `XMATCH_CDS_DEADLINE`",
        _CDS_DEFAULTS.max_in_flight,
        ge=1,
        le=MAX_REQUESTS_IN_FLIGHT,
        hint=": CDS bans addresses that run more jobs in parallel (it asks for one or two)",
    )
    retries: int = setting(
        "RETRIES",
        "CDS retries after the first attempt (the original's meaning)",
        _CDS_DEFAULTS.max_attempts - 1,
        ge=0,
    )
    retry_interval_seconds: float = setting(
        "RETRY_INTERVAL",
        "first backoff between CDS attempts, in seconds (exponential with jitter)",
        _CDS_DEFAULTS.backoff_initial_seconds,
        ge=0.01,
    )

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"XMATCH_CDS_URL={value!r} must be an http(s):// URL")
        return value

    def client_settings(self) -> CdsClientSettings:
        """The client's own settings (the original's RETRIES counted retries, not attempts)."""
        return CdsClientSettings(
            url=self.url,
            # One limit for the whole fleet (services.py holds it in the pipeline database);
            # a run's own chunks may use as many requests at once.
            max_in_flight=self.max_in_flight,
            chunk_rows=self.chunk_rows,
            connect_timeout_seconds=self.connect_timeout_seconds,
            read_timeout_seconds=self.read_timeout_seconds,
            deadline_seconds=self.deadline_seconds,
            max_attempts=self.retries + 1,
            backoff_initial_seconds=self.retry_interval_seconds,
        )


_GROUPS = ("input_topics", "database", "step", "cds")


class PipelineSettings(SettingsGroup):
    """Everything a micro-batch run and the lag sensor need, in the order they are checked
    (a validator may read the fields above it)."""

    kafka_bootstrap_servers: str = setting(
        "CONSUMER_SERVER", "Kafka bootstrap servers", example="localhost:9092"
    )
    producer_server: str | None = setting(
        "PRODUCER_SERVER",
        "must equal `CONSUMER_SERVER` if set: exactly-once commits the input offsets in the "
        "output's transaction, so both must be one cluster",
        None,
    )
    input_topics: TopicSelection
    consumer_group_id: str = setting(
        "CONSUMER_GROUP_ID", "the consumer group whose offsets the runs commit", example="xmatch"
    )
    output_topic: str = setting("PRODUCER_TOPIC", "output topic", example="xmatch")
    dead_letter_topic_setting: str | None = setting(
        "XMATCH_DEAD_LETTER_TOPIC",
        "dead-letter topic",
        None,
        default_text="`<PRODUCER_TOPIC>.dlq`",
    )
    consumer_kafka_username: str | None = setting(
        "CONSUMER_KAFKA_USERNAME",
        "with `CONSUMER_KAFKA_PASSWORD`, switches on SASL_SSL with SCRAM-SHA-512 for the "
        "reader (range reads, the sensor's offsets). ACLs: [Kafka security](#kafka-security)",
        None,
    )
    consumer_kafka_password: SecretStr | None = setting(
        "CONSUMER_KAFKA_PASSWORD", "the reader's SASL password", None, validate_default=True
    )
    producer_kafka_username: str | None = setting(
        "PRODUCER_KAFKA_USERNAME",
        "the transactional publisher's SASL user (the reader's when unset)",
        None,
    )
    producer_kafka_password: SecretStr | None = setting(
        "PRODUCER_KAFKA_PASSWORD", "the publisher's SASL password", None, validate_default=True
    )
    metrics_kafka_username: str | None = setting(
        "METRICS_KAFKA_USERNAME", "the metrics message's SASL user", None
    )
    metrics_kafka_password: SecretStr | None = setting(
        "METRICS_KAFKA_PASSWORD", "the metrics message's SASL password", None, validate_default=True
    )
    kafka_ssl_ca_location: Path | None = setting(
        "XMATCH_KAFKA_SSL_CA_LOCATION",
        "the CA certificate (PEM) that signed the brokers' certificates, for a private CA on "
        "SASL_SSL (librdkafka's `ssl.ca.location`); only with credentials",
        None,
        default_text="the system's CAs",
    )
    database: DatabaseSettings
    step: StepSettings
    metrics_host: str | None = setting(
        "METRICS_HOST",
        "Kafka servers of the original's metrics message",
        None,
        default_text="`CONSUMER_SERVER`",
    )
    metrics_topic: str | None = setting(
        "METRICS_TOPIC", "topic of the original's metrics message (none: not sent)", None
    )
    engine: EngineName = setting("XMATCH_ENGINE", "`cds` (as the original) or `local`", "cds")
    cds: CdsSettings
    catalogs: tuple[ConfiguredCatalog, ...] = setting(
        "XMATCH_CATALOGS",
        'JSON array of catalogs (the original\'s array): `[{"name": "allwise", "columns": '
        '[...], "radius_arcsec": 1.0, "selection": "best"}]`; the fields of an entry: '
        "[Catalogs](#catalogs)",
        (default_catalog(allwise.CATALOG),),
        default_text="ALLWISE, 1″, best",
    )
    local_catalog_directories: dict[str, Path] = setting(
        "XMATCH_LOCAL_CATALOGS",
        "local HATS catalogs, `name=dir,…` (e.g. `allwise=/data/allwise_hats`): a catalog's "
        "or a collection's root; one without `properties` or partition info, or without a "
        "column `XMATCH_CATALOGS` asks of it, stops the load",
        "",
        default_text="",
        validate_default=True,
    )
    use_match_cache: bool = setting(
        "XMATCH_MATCH_CACHE",
        "reuse stored matches of already-matched objects instead of asking the engine again "
        "(the distance is recomputed for the alert's own position)",
        None,
        default_text="on for `cds`, off for `local`",
        validate_default=True,
    )
    consume_messages: int = setting(
        "CONSUME_MESSAGES",
        "the original's batch size: the default of `XMATCH_MAX_MESSAGES_PER_RUN`",
        5_000,
        ge=1,
    )
    max_messages_per_run: int = setting(
        "XMATCH_MAX_MESSAGES_PER_RUN",
        "offsets per run",
        None,
        default_text="`CONSUME_MESSAGES`",
        validate_default=True,
        ge=1,
    )
    chunk_messages: int = setting(
        "XMATCH_CHUNK_MESSAGES", "messages per chunk inside a run (bounds memory)", 2_000, ge=1
    )
    consume_timeout_seconds: float = setting(
        "CONSUME_TIMEOUT",
        "seconds a run waits for each Kafka request it makes besides reading (the group's "
        "offset, the topics' size limits)",
        10.0,
        ge=0.1,
    )
    kafka_admin_timeout_seconds: float = setting(
        "XMATCH_KAFKA_TIMEOUT", "seconds the sensor waits for offsets", 5.0, ge=0.1
    )
    sensor_interval_seconds: int = setting(
        "XMATCH_SENSOR_INTERVAL_SECONDS", "sensor interval", 30, ge=MINIMUM_SENSOR_INTERVAL_SECONDS
    )
    max_run_attempts: int = setting(
        "XMATCH_MAX_RUN_ATTEMPTS",
        "attempts per range before the partition waits for an operator",
        3,
        ge=1,
    )
    output_precision: OutputPrecision = setting(
        "XMATCH_OUTPUT_PRECISION",
        "`double` (lossless) or `float32` (the original schema's type)",
        "double",
        hint=" ('float32': the original schema's 32-bit floats, for strict compatibility)",
    )
    enable_partition_eof: str | None = setting(
        "ENABLE_PARTITION_EOF",
        "accepted and ignored: a run always ends at its range's end offset",
        None,
    )
    survey: Survey = setting(
        "XMATCH_SURVEY",
        "the survey of every input topic no rule of XMATCH_TOPIC_SURVEYS names: `ztf` or `lsst`",
        "ztf",
    )
    topic_survey_rules: str | None = setting(
        "XMATCH_TOPIC_SURVEYS",
        "per-topic surveys, comma-separated `regex=survey` pairs, e.g. `lsst-alerts.*=lsst`",
        None,
    )
    lsst_schema_registry_url: str | None = setting(
        "XMATCH_LSST_SCHEMA_REGISTRY_URL",
        "Confluent schema registry for LSST alerts; unset: lsst-alert-packet's schemas",
        None,
        validate_default=True,
    )
    lsst_registry_timeout_seconds: float = setting(
        "XMATCH_LSST_SCHEMA_REGISTRY_TIMEOUT", "seconds per schema registry request", 10.0, ge=0.1
    )
    lsst_registry_retries: int = setting(
        "XMATCH_LSST_SCHEMA_REGISTRY_RETRIES", "retries of a schema registry request", 3, ge=0
    )
    check_min_match_rate: float = setting(
        "XMATCH_CHECK_MIN_MATCH_RATE",
        "asset check: the lowest share of a range's decoded alerts with a match (a sudden "
        "drop flags a broken catalog or CDS)",
        0.0,
        ge=0.0,
        le=1.0,
    )
    check_max_match_rate: float = setting(
        "XMATCH_CHECK_MAX_MATCH_RATE",
        "asset check: the highest share of a range's decoded alerts with a match",
        1.0,
        ge=0.0,
        le=1.0,
    )
    check_max_lag: int = setting(
        "XMATCH_CHECK_MAX_LAG",
        "asset check: the most messages a partition may still lag after a run (freshness)",
        100_000,
        ge=0,
    )
    failure_alert_topic: str | None = setting(
        "XMATCH_FAILURE_TOPIC",
        "Kafka topic (input cluster) that gets each failed run as JSON; unset: only logged",
        None,
    )
    failure_webhook_url: str | None = setting(
        "XMATCH_FAILURE_WEBHOOK_URL",
        "URL that gets each failed run as a JSON POST; unset: none",
        None,
    )

    @model_validator(mode="before")
    @classmethod
    def _from_flat_environment(cls, data: object) -> object:
        """Blank values count as unset; each group reads the same flat variables."""
        if not isinstance(data, Mapping):
            return data
        known = set(setting_names())
        flat = {
            name: value.strip()
            for name, value in data.items()
            if name in known and isinstance(value, str) and value.strip()
        }
        return {**flat, **dict.fromkeys(_GROUPS, flat)}

    @field_validator("producer_server")
    @classmethod
    def _same_cluster(cls, value: str | None, info: ValidationInfo) -> str | None:
        consumer = info.data.get("kafka_bootstrap_servers")
        if value is not None and consumer is not None and value != consumer:
            raise ValueError(
                f"PRODUCER_SERVER={value!r} differs from CONSUMER_SERVER={consumer!r}: "
                "exactly-once commits the input offsets in the output's Kafka transaction, so "
                "both must be the same cluster (unset PRODUCER_SERVER)"
            )
        return value

    @field_validator("consumer_kafka_password", "producer_kafka_password", "metrics_kafka_password")
    @classmethod
    def _credentials_pair(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        """Each client's SASL username and password come together (CONSUMER_, PRODUCER_,
        METRICS_); the username is declared just above its password."""
        prefix = str(info.field_name).removesuffix("_kafka_password")
        if (info.data.get(f"{prefix}_kafka_username") is None) != (value is None):
            upper = prefix.upper()
            raise ValueError(
                f"{upper}_KAFKA_USERNAME and {upper}_KAFKA_PASSWORD go together "
                "(SASL_SSL with SCRAM-SHA-512): set both or neither"
            )
        return value

    @field_validator("kafka_ssl_ca_location")
    @classmethod
    def _pem_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        raw = str(value)
        location = value.expanduser()
        if not any(
            info.data.get(f"{prefix}_kafka_username")
            for prefix in ("consumer", "producer", "metrics")
        ):
            raise ValueError(
                f"XMATCH_KAFKA_SSL_CA_LOCATION={raw!r} is set but no Kafka credentials are: TLS "
                "is used only with SASL_SSL (set CONSUMER_KAFKA_USERNAME and _PASSWORD) or unset it"
            )
        try:
            content = location.read_text(errors="replace")
        except OSError as error:
            raise ValueError(
                f"XMATCH_KAFKA_SSL_CA_LOCATION={raw!r} cannot be read ({error.strerror}): give "
                "the path of the CA certificate (PEM) that signed the brokers' certificates"
            ) from None
        if "-----BEGIN CERTIFICATE-----" not in content:
            raise ValueError(
                f"XMATCH_KAFKA_SSL_CA_LOCATION={raw!r} holds no PEM certificate ('-----BEGIN "
                "CERTIFICATE-----'): give the CA certificate that signed the brokers' certificates"
            )
        return location

    @field_validator("catalogs", mode="before")
    @classmethod
    def _catalogs_json(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        try:
            entries = json.loads(value)
        except ValueError as error:
            raise ValueError(
                f"XMATCH_CATALOGS is malformed (not JSON: {error}); expected e.g. "
                '[{"name": "allwise", "columns": ["AllWISE", "RAJ2000", "DEJ2000", "W1mag"], '
                '"radius_arcsec": 1.0, "selection": "best"}]'
            ) from None
        try:
            return configured_catalogs(entries)
        except CatalogConfigurationError as error:
            raise ValueError("\n- ".join(error.problems)) from None

    @field_validator("local_catalog_directories", mode="before")
    @classmethod
    def _name_equals_directory(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        directories: dict[str, Path] = {}
        if value:
            for item in value.split(","):
                name, separator, directory = item.partition("=")
                if not separator or not name.strip() or not directory.strip():
                    raise ValueError(
                        f"XMATCH_LOCAL_CATALOGS item {item!r} must look like NAME=DIRECTORY, "
                        "e.g. allwise=/data/allwise_hats"
                    )
                directories[name.strip()] = Path(directory.strip())
        if info.data.get("engine") == "local":
            _check_local_indexes(directories, info.data.get("catalogs", ()))
        return directories

    @field_validator("use_match_cache", mode="before")
    @classmethod
    def _cache_where_calls_are_remote(cls, value: object, info: ValidationInfo) -> object:
        # Worth it where every call is remote (CDS); a local index is faster than the lookup.
        return info.data.get("engine", "cds") == "cds" if value is None else value

    @field_validator("max_messages_per_run", mode="before")
    @classmethod
    def _the_originals_batch_size(cls, value: object, info: ValidationInfo) -> object:
        return info.data.get("consume_messages", 5_000) if value is None else value

    @field_validator("topic_survey_rules")
    @classmethod
    def _survey_rules(cls, value: str | None, info: ValidationInfo) -> str | None:
        default = info.data.get("survey", "ztf")
        try:
            TopicSurveys.parse(default, value)
        except ValueError as error:
            raise ValueError(
                f"XMATCH_SURVEY={default!r} / XMATCH_TOPIC_SURVEYS={value!r}: {error}; the survey "
                "is 'ztf' or 'lsst', the rules regex=survey pairs, e.g. 'lsst-alerts.*=lsst'"
            ) from None
        return value

    @field_validator("lsst_schema_registry_url")
    @classmethod
    def _registry_or_packaged_schemas(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"XMATCH_LSST_SCHEMA_REGISTRY_URL={value!r} must be http(s)://")
        rules = info.data.get("topic_survey_rules")
        if value is None and TopicSurveys.parse(info.data.get("survey", "ztf"), rules).names(
            "lsst"
        ):
            from xmatch_pipeline.decode.lsst_schemas import packaged_lsst_schemas

            try:
                packaged_lsst_schemas()
            except ValueError as error:
                raise ValueError(
                    f"XMATCH_SURVEY / XMATCH_TOPIC_SURVEYS name LSST: {error}"
                ) from None
        return value

    @property
    def topic_surveys(self) -> TopicSurveys:
        """The survey of each input topic (a run reads one topic, so one survey)."""
        return TopicSurveys.parse(self.survey, self.topic_survey_rules)

    @field_validator("check_max_match_rate")
    @classmethod
    def _rates_in_order(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("check_min_match_rate", 0.0)
        if low > value:
            raise ValueError(
                f"XMATCH_CHECK_MIN_MATCH_RATE={low} and XMATCH_CHECK_MAX_MATCH_RATE={value}: "
                "need 0 <= min <= max <= 1 (shares of decoded alerts with a match, e.g. 0.5 and 1)"
            )
        return value

    @field_validator("failure_webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(
                f"XMATCH_FAILURE_WEBHOOK_URL={value!r} must be an http:// or https:// URL"
            )
        return value

    @property
    def checks(self) -> RangeCheckBounds:
        """The bounds of the range's asset checks."""
        return RangeCheckBounds(
            min_match_rate=self.check_min_match_rate,
            max_match_rate=self.check_max_match_rate,
            max_lag=self.check_max_lag,
        )

    @property
    def dead_letter_topic(self) -> str:
        return dead_letter_topic_for(self.output_topic, self.dead_letter_topic_setting)

    @property
    def metrics_bootstrap_servers(self) -> str | None:
        if self.metrics_topic is None:
            return self.metrics_host
        return self.metrics_host or self.kafka_bootstrap_servers

    @property
    def consumer_credentials(self) -> KafkaCredentials | None:
        return _credentials(self.consumer_kafka_username, self.consumer_kafka_password)

    @property
    def producer_credentials(self) -> KafkaCredentials | None:
        return _credentials(self.producer_kafka_username, self.producer_kafka_password)

    @property
    def metrics_credentials(self) -> KafkaCredentials | None:
        return _credentials(self.metrics_kafka_username, self.metrics_kafka_password)


def _credentials(username: str | None, password: SecretStr | None) -> KafkaCredentials | None:
    if username is None or password is None:
        return None
    return KafkaCredentials(username, password)


def _check_local_indexes(directories: Mapping[str, Path], catalogs: object) -> None:
    """Checked here so that a wrong path stops the code location, not every run."""
    problems: list[str] = []
    names = (
        [c.name for c in catalogs if isinstance(c, ConfiguredCatalog)]
        if isinstance(catalogs, tuple)
        else []
    )
    missing = [name for name in names if name not in directories]
    if missing:
        problems.append(
            f"XMATCH_ENGINE=local needs an index for every catalog; missing {missing}: build "
            "one with 'xmatch-pipeline catalog build' and set "
            "XMATCH_LOCAL_CATALOGS=allwise=/path/to/hats_catalog"
        )
    # Each local catalog is a readable HATS catalog holding every column asked of it.
    for name, directory in directories.items():
        try:
            hats = open_hats_catalog(directory)
        except HatsFormatError as error:
            problems.append(f"XMATCH_LOCAL_CATALOGS {name}={directory}: {error}")
            continue
        for spec in catalogs if isinstance(catalogs, tuple) else ():
            if not isinstance(spec, ConfiguredCatalog) or spec.name != name:
                continue
            missing = [column for column in spec.spec.columns if column not in hats.columns]
            if missing:
                problems.append(
                    f"XMATCH_CATALOGS asks catalog {name!r} for column(s) {', '.join(missing)}, "
                    f"which the HATS catalog at XMATCH_LOCAL_CATALOGS {name}={directory} does "
                    f"not have; it has {', '.join(hats.columns)}"
                )
    if problems:
        raise ValueError("\n- ".join(problems))


def declared_settings(model: type[BaseModel] = PipelineSettings) -> Iterator[FieldInfo]:
    """Every variable's field, in declaration order, groups expanded where they stand."""
    for field in model.model_fields.values():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, SettingsGroup):
            yield from declared_settings(group)
        elif field.alias is not None:
            yield field


def setting_names() -> tuple[str, ...]:
    """The names of every variable the pipeline reads."""
    return tuple(field.alias for field in declared_settings() if field.alias is not None)


def _extra(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _problem(error: ErrorDetails, fields: Mapping[str, FieldInfo]) -> str:
    """One line naming the variable, the value given and what it should be."""
    name = next((str(part) for part in reversed(error["loc"]) if str(part) in fields), "")
    field = fields.get(name)
    extra = _extra(field) if field is not None else {}
    value = error.get("input")
    context = error.get("ctx", {})
    kind = error["type"]
    if kind == "missing":
        return f"{name} is not set: set it to e.g. {extra.get('example', '…')}"
    if kind == "value_error":
        return str(context.get("error", error["msg"]))
    if kind in ("int_parsing", "int_from_float"):
        return f"{name}={value!r} is not a whole number"
    if kind == "float_parsing":
        return f"{name}={value!r} is not a number"
    if kind == "bool_parsing":
        return f"{name}={value!r} must be true or false"
    if kind == "literal_error":
        return f"{name}={value!r} must be {context.get('expected')}{extra.get('hint', '')}"
    if kind in ("greater_than_equal", "greater_than"):
        return f"{name}={value} must be at least {context.get('ge', context.get('gt'))}"
    if kind in ("less_than_equal", "less_than"):
        bound = context.get("le", context.get("lt"))
        return f"{name}={value} must be at most {bound}{extra.get('hint', '')}"
    return f"{name}: {error['msg']}"


def load_settings(environment: Mapping[str, str]) -> PipelineSettings:
    """Build and validate the settings; raise SettingsError listing every problem."""
    try:
        return PipelineSettings.model_validate(environment)
    except ValidationError as error:
        fields = {field.alias: field for field in declared_settings() if field.alias}
        problems = [_problem(detail, fields) for detail in error.errors()]
        raise SettingsError(
            "xmatch_pipeline settings are not valid:\n- " + "\n- ".join(problems)
        ) from None
