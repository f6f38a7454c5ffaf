"""The pipeline on a broker that requires SASL_SSL with SCRAM-SHA-512 and enforces ACLs.

The devstack's broker has a SASL_SSL listener beside its PLAINTEXT one, with a certificate
from its own CA. Each test creates its own SCRAM users through the PLAINTEXT listener (a
super user's) and grants them the pipeline's ACLs (``kafka.acls.pipeline_acls``), then
runs the sensor and the job through Dagster with the original step's variables
(``CONSUMER_KAFKA_USERNAME`` …). Topics are created and checked over PLAINTEXT.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import DagsterInstance, RunRequest, serialize_value

from xmatch_pipeline.devtools.devstack import DevstackSettings
from xmatch_pipeline.devtools.devstack.kafka_security import create_scram_user, grant_acls
from xmatch_pipeline.devtools.devstack.ports import port_accepts_connections
from xmatch_pipeline.kafka.acls import AclGrant, pipeline_acls
from xmatch_pipeline.kafka.errors import KafkaAuthenticationError
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.orchestration.jobs import microbatch_run_config
from xmatch_pipeline.orchestration.run_tags import range_tags
from xmatch_pipeline_tests.pipeline_fixtures import (
    SmallStream,
    drive_sensor_and_jobs,
    evaluate_sensor,
    execute_request,
    group_offsets,
    pipeline_environment,
    produce_values,
    read_committed,
    small_stream,
    unique_group,
    xmatch_resource,
)

pytestmark = pytest.mark.timeout(240)

ALERTS = 30
MAX_MESSAGES_PER_RUN = 20


@pytest.fixture(scope="module")
def sasl_bootstrap(devstack: DevstackSettings) -> str:
    if not port_accepts_connections(devstack.kafka_host, devstack.kafka_sasl_port):
        pytest.fail(
            f"the devstack's SASL_SSL listener {devstack.kafka_sasl_bootstrap_servers} does "
            "not answer: a broker started by an older devstack has none. Restart it: "
            "xmatch-pipeline devstack down && xmatch-pipeline devstack up"
        )
    return devstack.kafka_sasl_bootstrap_servers


@pytest.fixture(scope="module")
def stream(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SmallStream:
    return small_stream(shared_data_dir, tmp_path_factory.mktemp("sasl-stream"), count=ALERTS)


@dataclass(frozen=True)
class SaslDeployment:
    """One deployment's topics and group, its users' passwords and its environment."""

    input_topic: str
    output_topic: str
    group: str
    environment: dict[str, str]
    passwords: tuple[str, ...]
    plaintext_bootstrap: str


def plaintext(deployment: SaslDeployment) -> str:
    """The PLAINTEXT listener (a super user's), for checking what the pipeline did."""
    return deployment.plaintext_bootstrap


def _user(devstack: DevstackSettings, grants: list[AclGrant]) -> tuple[str, str]:
    username = f"xmatch-test-{uuid.uuid4().hex[:8]}"
    password = f"pw-{secrets.token_urlsafe(24)}"
    create_scram_user(devstack.kafka_bootstrap_servers, username, password)
    grant_acls(devstack.kafka_bootstrap_servers, username, grants)
    return username, password


@pytest.fixture
def deploy(
    devstack: DevstackSettings,
    sasl_bootstrap: str,
    stream: SmallStream,
    fresh_database_url: str,
    new_topic: Callable[..., str],
) -> Callable[..., SaslDeployment]:
    """Topics with the stream loaded, a reader and a publisher user, and the environment;
    ``without`` is a grant the publisher does not get (``output``, ``transactional_id``,
    ``input``, ``group``)."""

    def make(without: str | None = None, **overrides: str) -> SaslDeployment:
        input_topic, output_topic = new_topic("sasl-in"), new_topic("sasl-out")
        dead_letter_topic = new_topic(f"{output_topic}.dlq")
        group = unique_group("xmatch-sasl")
        grants = pipeline_acls(
            input_topics=[input_topic],
            consumer_group=group,
            output_topic=output_topic,
            dead_letter_topic=dead_letter_topic,
            backfills=False,
        )
        withheld = {
            None: None,
            "output": ("topic", output_topic),
            "transactional_id": ("transactional_id", grants[-1].name),
            "input": ("topic", input_topic),
            "group": ("group", group),
        }[without]
        reader_grants = [grant for grant in grants if grant.role == "reader"]
        publisher_grants = [
            grant
            for grant in grants
            if grant.role == "publisher" and (grant.resource, grant.name) != withheld
        ]
        reader, reader_password = _user(devstack, reader_grants)
        publisher, publisher_password = _user(devstack, publisher_grants)
        produce_values(devstack.kafka_bootstrap_servers, input_topic, stream.messages[:ALERTS])
        environment = pipeline_environment(
            kafka_bootstrap=sasl_bootstrap,
            database_url=fresh_database_url,
            input_topic=input_topic,
            output_topic=output_topic,
            group_id=group,
            index_dir=stream.index_dir,
            XMATCH_MAX_MESSAGES_PER_RUN=str(MAX_MESSAGES_PER_RUN),
            CONSUMER_KAFKA_USERNAME=reader,
            CONSUMER_KAFKA_PASSWORD=reader_password,
            PRODUCER_KAFKA_USERNAME=publisher,
            PRODUCER_KAFKA_PASSWORD=publisher_password,
            XMATCH_KAFKA_SSL_CA_LOCATION=str(devstack.kafka_ca_file),
            XMATCH_DEAD_LETTER_TOPIC=dead_letter_topic,
        )
        environment |= overrides
        return SaslDeployment(
            input_topic,
            output_topic,
            group,
            environment,
            (reader_password, publisher_password),
            devstack.kafka_bootstrap_servers,
        )

    return make


def _first_range_request(deployment: SaslDeployment) -> RunRequest:
    offset_range = OffsetRange(deployment.input_topic, 0, 0, MAX_MESSAGES_PER_RUN)
    return RunRequest(
        run_key=f"{offset_range}#attempt1",
        run_config=microbatch_run_config(offset_range),
        tags=range_tags(offset_range, 1),
    )


def _failure_message(instance: DagsterInstance, run_id: str) -> str:
    failures = [
        event.dagster_event.step_failure_data.error
        for event in instance.all_logs(run_id)
        if event.dagster_event is not None and event.dagster_event.is_step_failure
    ]
    assert failures, f"run {run_id} has no step failure"
    error = failures[0]
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)


def _stored_text(instance: DagsterInstance, instance_dir: Path) -> str:
    """Everything Dagster kept: runs (config, tags), event logs, captured logs, its files."""
    parts = []
    for run in instance.get_runs():
        parts += [serialize_value(run), str(run.run_config), str(run.tags)]
        parts += [serialize_value(event) for event in instance.all_logs(run.run_id)]
    for path in instance_dir.rglob("*"):
        if path.is_file():
            parts.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(parts)


def test_the_pipeline_runs_over_sasl_ssl_with_only_the_acls_it_needs_and_no_secret_leaks(
    *,
    deploy: Callable[..., SaslDeployment],
    devstack: DevstackSettings,
    stream: SmallStream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    deployment = deploy()
    xmatch = xmatch_resource(deployment.environment)
    instance_dir = tmp_path / "dagster"
    instance_dir.mkdir()
    instance = DagsterInstance.local_temp(tempdir=str(instance_dir))

    log = drive_sensor_and_jobs(xmatch, instance)

    assert not log.failed_runs, [run.all_events for run in log.failed_runs][:1]
    assert len(log.runs) == 2  # [0, 20) and [20, 30)
    output = read_committed(plaintext(deployment), deployment.output_topic)
    expected_keys = sorted(key for key, _ in stream.messages[:ALERTS])
    assert sorted((m.key or b"").decode() for m in output) == expected_keys
    assert group_offsets(plaintext(deployment), deployment.group, deployment.input_topic) == {
        0: ALERTS
    }

    stored = _stored_text(instance, instance_dir)
    captured = capfd.readouterr()
    for password in deployment.passwords:
        assert password not in stored
        assert password not in caplog.text
        assert password not in captured.out + captured.err
        for tick in log.ticks:
            assert password not in repr(tick.result)


def test_a_wrong_password_fails_the_sensor_and_the_run_naming_authentication(
    deploy: Callable[..., SaslDeployment],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    wrong = f"wrong-{secrets.token_urlsafe(12)}"
    deployment = deploy(CONSUMER_KAFKA_PASSWORD=wrong)
    xmatch = xmatch_resource(deployment.environment)
    instance = DagsterInstance.ephemeral()

    with pytest.raises(KafkaAuthenticationError) as raised:
        evaluate_sensor(xmatch, instance, None)
    result = execute_request(xmatch, instance, _first_range_request(deployment))

    assert not result.success
    run_error = _failure_message(instance, result.run_id)
    reader = deployment.environment["CONSUMER_KAFKA_USERNAME"]
    for message in (str(raised.value), run_error):
        assert "authentication failed" in message
        assert deployment.environment["CONSUMER_SERVER"] in message
        assert repr(reader) in message
        assert "CONSUMER_KAFKA_USERNAME and CONSUMER_KAFKA_PASSWORD" in message
        assert wrong not in message
    captured = capfd.readouterr()
    assert wrong not in caplog.text + captured.out + captured.err
    assert group_offsets(plaintext(deployment), deployment.group, deployment.input_topic) == {
        0: None
    }


@pytest.mark.parametrize(
    ("without", "permission"),
    [
        ("output", "the WRITE permission on topic '{output}'"),
        ("transactional_id", "the WRITE permission on transactional id 'xmatch-{group}-"),
        ("input", "the READ permission on topic '{input}'"),
        ("group", "the READ permission on group '{group}'"),
    ],
)
def test_a_missing_acl_fails_the_run_naming_the_permission_and_nothing_is_visible(
    without: str,
    permission: str,
    deploy: Callable[..., SaslDeployment],
) -> None:
    deployment = deploy(without=without)
    xmatch = xmatch_resource(deployment.environment)
    instance = DagsterInstance.ephemeral()

    result = execute_request(xmatch, instance, _first_range_request(deployment))

    assert not result.success
    message = _failure_message(instance, result.run_id)
    publisher = deployment.environment["PRODUCER_KAFKA_USERNAME"]
    assert f"refused User:{publisher}" in message
    expected = permission.format(
        output=deployment.output_topic, group=deployment.group, input=deployment.input_topic
    )
    assert expected in message
    assert "kafka-acls.sh" in message
    assert all(password not in message for password in deployment.passwords)
    assert read_committed(plaintext(deployment), deployment.output_topic) == []
    assert group_offsets(plaintext(deployment), deployment.group, deployment.input_topic) == {
        0: None
    }
