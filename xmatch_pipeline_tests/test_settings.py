"""Settings from the environment: the original step's variables carry over, every problem is
named at once with what it should look like, and secrets never show."""

from __future__ import annotations

from pathlib import Path

import pytest

from xmatch_pipeline.match.catalog_configuration import default_catalog
from xmatch_pipeline.match.catalogs import allwise
from xmatch_pipeline.services import PipelineServices
from xmatch_pipeline.settings import SettingsError, load_settings, setting_names
from xmatch_pipeline.settings_table import README, readme_with_table

DB_SECRET = "db-secret-Zq8"
SASL_SECRET = "sasl-secret-Wv3"

MINIMAL = {
    "CONSUMER_SERVER": "kafka-1:9092",
    "CONSUMER_TOPICS": "ztf_20200101_programid1",
    "CONSUMER_GROUP_ID": "xmatch",
    "PRODUCER_TOPIC": "xmatch",
    "DB_HOST": "db",
    "DB_USER": "alerce",
    "DB_PASSWORD": DB_SECRET,
    "DB_NAME": "ztf",
}

#: An environment as the original step (ALeRCE xmatch 1.0 and later) was deployed with.
ORIGINAL = {
    "CONSUMER_SERVER": "kafka-1:9092,kafka-2:9092",
    "CONSUMER_TOPICS": "ztf_20200101_programid1, ztf_20200102_programid1",
    "CONSUMER_GROUP_ID": "xmatch_consumer",
    "CONSUME_TIMEOUT": "10",
    "CONSUME_MESSAGES": "1000",
    "ENABLE_PARTITION_EOF": "False",
    "PRODUCER_SERVER": "kafka-1:9092,kafka-2:9092",
    "PRODUCER_TOPIC": "xmatch",
    "METRICS_HOST": "metrics-kafka:9092",
    "METRICS_TOPIC": "metrics",
    "DB_ENGINE": "postgres",
    "DB_HOST": "db.example.org",
    "DB_USER": "alerce",
    "DB_PASSWORD": DB_SECRET,
    "DB_PORT": "5433",
    "DB_NAME": "ztf",
    "STEP_ID": "xmatch_1.0",
    "STEP_NAME": "xmatch",
    "STEP_VERSION": "1.0",
    "RETRIES": "3",
    "RETRY_INTERVAL": "2",
    "CONSUMER_KAFKA_USERNAME": "alerce",
    "CONSUMER_KAFKA_PASSWORD": SASL_SECRET,
    "PRODUCER_KAFKA_USERNAME": "alerce",
    "PRODUCER_KAFKA_PASSWORD": SASL_SECRET,
}


def _problems(environment: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as raised:
        load_settings(environment)
    return str(raised.value)


def test_every_missing_variable_is_named_in_one_error() -> None:
    message = _problems({})
    for name in (
        "CONSUMER_SERVER",
        "CONSUMER_GROUP_ID",
        "PRODUCER_TOPIC",
        "DB_HOST",
        "DB_USER",
        "DB_NAME",
    ):
        assert f"{name} is not set: set it to e.g." in message
    assert "set exactly one of CONSUMER_TOPICS" in message
    assert "TOPIC_STRATEGY_FORMAT (e.g. ztf_%s_programid1)" in message


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DB_PORT", "five", "DB_PORT='five' is not a whole number"),
        ("DB_PORT", "0", "DB_PORT=0 must be at least 1"),
        ("XMATCH_CATALOGS", "[{not json", "XMATCH_CATALOGS is malformed"),
        ("XMATCH_CATALOGS", '[{"columns": ["a"]}]', "at least 'name'"),
        ("XMATCH_ENGINE", "vizier", "XMATCH_ENGINE='vizier' must be 'cds' or 'local'"),
        ("XMATCH_ENGINE", "local", "XMATCH_ENGINE=local needs an index for every catalog"),
        ("XMATCH_CDS_URL", "cdsxmatch.example", "must be an http(s):// URL"),
        ("XMATCH_CDS_MAX_IN_FLIGHT", "0", "XMATCH_CDS_MAX_IN_FLIGHT=0 must be at least 1"),
        ("XMATCH_CDS_MAX_IN_FLIGHT", "9", "must be at most 4: CDS bans addresses"),
        ("XMATCH_SENSOR_INTERVAL_SECONDS", "1", "must be at least 5"),
        ("XMATCH_MAX_RUN_ATTEMPTS", "0", "XMATCH_MAX_RUN_ATTEMPTS=0 must be at least 1"),
        ("XMATCH_LOCAL_CATALOGS", "allwise", "must look like NAME=DIRECTORY"),
        ("XMATCH_OUTPUT_PRECISION", "half", "must be 'double'"),
        ("XMATCH_MATCH_CACHE", "maybe", "must be true or false"),
        ("XMATCH_CHECK_MAX_MATCH_RATE", "1.5", "XMATCH_CHECK_MAX_MATCH_RATE=1.5 must be at most 1"),
        ("XMATCH_FAILURE_WEBHOOK_URL", "ftp://x", "http:// or https://"),
        ("PRODUCER_SERVER", "other-kafka:9092", "differs from CONSUMER_SERVER"),
        ("CONSUMER_KAFKA_PASSWORD", SASL_SECRET, "go together"),
        ("DB_ENGINE", "mysql", "only postgresql is supported"),
    ],
)
def test_a_malformed_value_is_named_with_what_it_should_look_like(
    variable: str, value: str, expected: str
) -> None:
    message = _problems(MINIMAL | {variable: value})
    assert expected in message
    assert variable in message
    assert DB_SECRET not in message
    assert SASL_SECRET not in message


def test_several_problems_are_reported_together() -> None:
    message = _problems(
        MINIMAL | {"DB_PORT": "x", "XMATCH_ENGINE": "vizier", "XMATCH_CATALOGS": "{"}
    )
    assert message.count("\n- ") == 3


@pytest.mark.parametrize(
    ("formats", "valid"),
    [
        ("ztf_%s_programid1", True),
        ("ztf_%s_programid1,ztf_%s_programid2", True),
        ("ztf_programid1", False),
        ("ztf_%s_programid1,ztf_programid2", False),
        ("ztf_%s_%s", False),
    ],
)
def test_daily_topic_formats_are_checked_like_the_topic_selection_reads_them(
    formats: str, valid: bool
) -> None:
    environment = {k: v for k, v in MINIMAL.items() if k != "CONSUMER_TOPICS"}
    environment["TOPIC_STRATEGY_FORMAT"] = formats
    if valid:
        assert load_settings(environment).input_topics.daily_format == formats
    else:
        assert "each format must contain '%s' once" in _problems(environment)


def test_two_ways_of_naming_topics_are_refused() -> None:
    message = _problems(MINIMAL | {"XMATCH_TOPIC_PATTERN": "^ztf_.*$"})
    assert "set exactly one of CONSUMER_TOPICS" in message
    message = _problems(MINIMAL | {"XMATCH_TOPIC_PATTERN": "ztf_(["})
    assert "XMATCH_TOPIC_PATTERN='ztf_([' is not a regex" in message


def test_topic_lists_drop_blanks() -> None:
    environment = MINIMAL | {"CONSUMER_TOPICS": " a , b, ,c, "}
    assert load_settings(environment).input_topics.topics == ("a", "b", "c")


def test_the_original_environment_carries_over() -> None:
    environment = ORIGINAL
    settings = load_settings(environment)
    assert settings.kafka_bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.input_topics.topics == ("ztf_20200101_programid1", "ztf_20200102_programid1")
    assert settings.consumer_group_id == "xmatch_consumer"
    assert settings.output_topic == "xmatch"
    assert settings.consume_timeout_seconds == 10.0
    assert settings.max_messages_per_run == 1000
    assert (settings.metrics_bootstrap_servers, settings.metrics_topic) == (
        "metrics-kafka:9092",
        "metrics",
    )
    database = settings.database
    assert (database.host, database.port, database.user, database.name) == (
        "db.example.org",
        5433,
        "alerce",
        "ztf",
    )
    assert database.password.get_secret_value() == DB_SECRET
    assert (settings.step.step_id, settings.step.name, settings.step.version) == (
        "xmatch_1.0",
        "xmatch",
        "1.0",
    )
    # RETRIES counted retries after the first attempt; RETRY_INTERVAL is the first wait.
    assert settings.cds.client_settings().max_attempts == 4
    assert settings.cds.client_settings().backoff_initial_seconds == 2.0
    # As the original: CDS, ALLWISE, best match within 1″.
    assert settings.engine == "cds"
    assert settings.catalogs == (default_catalog(allwise.CATALOG),)
    spec = settings.catalogs[0].spec
    assert (spec.columns, spec.radius_arcsec, spec.selection) == (allwise.CDS_COLUMNS, 1.0, "best")
    assert settings.output_precision == "double"
    assert settings.consumer_credentials is not None
    assert settings.consumer_credentials.username == "alerce"
    assert settings.consumer_credentials.password.get_secret_value() == SASL_SECRET
    kafka = PipelineServices(settings).kafka.as_dict()
    assert kafka["security.protocol"] == "SASL_SSL"
    assert kafka["sasl.mechanisms"] == "SCRAM-SHA-512"


def test_secrets_never_show_in_settings_or_clients() -> None:
    environment = ORIGINAL
    settings = load_settings(environment)
    services = PipelineServices(settings)
    shown = " ".join(
        [
            repr(settings),
            str(settings),
            repr(settings.database),
            settings.database.redacted_url(),
            repr(services.kafka),
            str(services.microbatch_config()),
        ]
    )
    assert DB_SECRET not in shown
    assert SASL_SECRET not in shown
    assert "alerce" in shown  # the user name is fine to show
    # The one place the password goes is the URL handed to SQLAlchemy.
    assert DB_SECRET in settings.database.sqlalchemy_url()


def test_local_engine_settings(tmp_path: Path) -> None:
    assert "allwise=" in _problems(
        MINIMAL | {"XMATCH_ENGINE": "local", "XMATCH_LOCAL_CATALOGS": f"allwise={tmp_path}"}
    )
    from xmatch_pipeline.match.catalogs.allwise import CDS_COLUMNS
    from xmatch_pipeline.match.local.build import build_catalog_index

    source = tmp_path / "allwise.csv"
    source.write_text(",".join(CDS_COLUMNS) + "\nJ1,10.0,0.0" + ",1.0" * 14 + "\n")
    build_catalog_index([source], tmp_path / "hats", id_column="AllWISE",
                        ra_column="RAJ2000", dec_column="DEJ2000")  # fmt: skip
    tmp_path = tmp_path / "hats"
    environment = MINIMAL | {
        "XMATCH_ENGINE": "local",
        "XMATCH_LOCAL_CATALOGS": f"allwise={tmp_path}",
        "XMATCH_MAX_MESSAGES_PER_RUN": "250",
        "CONSUME_MESSAGES": "1000",
    }
    settings = load_settings(environment)
    assert settings.engine == "local"
    assert settings.local_catalog_directories == {"allwise": tmp_path}
    assert settings.max_messages_per_run == 250  # the new variable wins over the original's
    assert settings.use_match_cache is False


def test_a_private_ca_reaches_every_kafka_client_and_the_publisher_uses_producer_credentials(
    tmp_path: Path,
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    environment = ORIGINAL | {
        "PRODUCER_KAFKA_USERNAME": "alerce-writer",
        "METRICS_KAFKA_USERNAME": "alerce-metrics",
        "METRICS_KAFKA_PASSWORD": "metrics-secret",
        "XMATCH_KAFKA_SSL_CA_LOCATION": str(ca),
    }
    services = PipelineServices(load_settings(environment))

    reader, publisher = services.kafka.as_dict(), services.publisher_kafka.as_dict()
    assert reader["ssl.ca.location"] == publisher["ssl.ca.location"] == str(ca)
    assert (reader["sasl.username"], publisher["sasl.username"]) == ("alerce", "alerce-writer")
    assert services.microbatch_config().publisher_kafka == services.publisher_kafka
    assert "PRODUCER_KAFKA_USERNAME" in services.publisher_kafka.credential_variables


def test_without_producer_credentials_the_publisher_uses_the_readers() -> None:
    environment = {
        key: value for key, value in ORIGINAL.items() if not key.startswith("PRODUCER_KAFKA")
    }
    services = PipelineServices(load_settings(environment))
    assert services.publisher_kafka is services.kafka
    assert "ssl.ca.location" not in services.kafka.as_dict()  # the system's CAs


@pytest.mark.parametrize(
    ("content", "credentials", "problem"),
    [
        (None, True, "cannot be read"),
        ("not a certificate", True, "holds no PEM certificate"),
        ("-----BEGIN CERTIFICATE-----", False, "no Kafka credentials are"),
    ],
)
def test_a_bad_ca_location_is_named_with_what_to_give(
    content: str | None,
    credentials: bool,
    problem: str,
    tmp_path: Path,
) -> None:
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_text(content)
    base = ORIGINAL if credentials else MINIMAL
    environment = base | {"XMATCH_KAFKA_SSL_CA_LOCATION": str(ca)}
    with pytest.raises(SettingsError, match="XMATCH_KAFKA_SSL_CA_LOCATION") as raised:
        load_settings(environment)
    assert problem in str(raised.value)


def test_the_readme_table_is_generated_from_the_declarations() -> None:
    """Run ``python -m xmatch_pipeline.settings_table`` after changing a setting."""
    readme = README.read_text()
    assert readme_with_table(readme) == readme
    for name in setting_names():
        assert f"| `{name}` |" in readme


def test_every_declared_variable_is_read_and_an_unknown_one_ignored() -> None:
    settings = load_settings(MINIMAL | {"CONSUME_TIMEOUT": "2.5", "NOT_OURS": "x"})
    assert settings.consume_timeout_seconds == 2.5
    assert PipelineServices(settings).microbatch_config().settings.consume_timeout_seconds == 2.5
    assert "NOT_OURS" not in setting_names()
