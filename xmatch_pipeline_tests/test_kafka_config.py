"""Kafka client configuration: SCRAM over SSL from credentials, never a password in a log."""

from __future__ import annotations

import pytest

from xmatch_pipeline.kafka.client_config import KafkaClientConfig, redacted


def test_plaintext_without_credentials() -> None:
    assert KafkaClientConfig("broker:9092").as_dict() == {"bootstrap.servers": "broker:9092"}


def test_credentials_switch_on_sasl_ssl_with_scram() -> None:
    config = KafkaClientConfig("broker:9093", "alerce", "s3cret-pw")
    assert config.as_dict({"group.id": "xmatch"}) == {
        "bootstrap.servers": "broker:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "alerce",
        "sasl.password": "s3cret-pw",
        "group.id": "xmatch",
    }


def test_password_never_in_repr_or_str() -> None:
    config = KafkaClientConfig("broker:9093", "alerce", "s3cret-pw", {"ssl.ca.location": "ca"})
    for text in (repr(config), str(config), f"{config}", repr([config])):
        assert "s3cret-pw" not in text
        assert "********" in text
        assert "alerce" in text
    assert redacted(config.as_dict())["sasl.password"] == "********"


def test_extra_settings_are_copied_and_later_ones_win() -> None:
    extra: dict[str, str | bool] = {"socket.keepalive.enable": True}
    config = KafkaClientConfig("b:1", extra=extra).with_settings({"client.rack": "r1"})
    extra["client.rack"] = "changed"
    assert config.as_dict() == {
        "bootstrap.servers": "b:1",
        "socket.keepalive.enable": True,
        "client.rack": "r1",
    }


def test_half_credentials_and_empty_bootstrap_are_refused() -> None:
    with pytest.raises(ValueError, match="username and password go together"):
        KafkaClientConfig("b:1", username="alerce")
    with pytest.raises(ValueError, match="bootstrap"):
        KafkaClientConfig("  ")


def test_the_pipeline_acls_name_each_role_and_the_transactional_id_prefixes() -> None:
    from xmatch_pipeline.kafka.acls import pipeline_acls
    from xmatch_pipeline.publish.kafka_transaction import transactional_id_for

    grants = pipeline_acls(
        input_topics=["ztf_a"],
        consumer_group="xmatch",
        output_topic="xmatch",
        dead_letter_topic="xmatch.dlq",
        metrics_topic="metrics",
    )
    by_role = {
        (grant.role, grant.resource, grant.name, grant.operation, grant.prefixed)
        for grant in grants
    }
    assert by_role == {
        ("reader", "topic", "ztf_a", "READ", False),
        ("reader", "group", "xmatch", "DESCRIBE", False),
        ("publisher", "topic", "xmatch", "WRITE", False),
        ("publisher", "topic", "xmatch.dlq", "WRITE", False),
        ("publisher", "topic", "ztf_a", "READ", False),
        ("publisher", "group", "xmatch", "READ", False),
        ("publisher", "transactional_id", "xmatch-xmatch-", "WRITE", True),
        ("publisher", "transactional_id", "xmatch-backfill-", "WRITE", True),
        ("metrics", "topic", "metrics", "WRITE", False),
    }
    assert transactional_id_for("xmatch", "ztf_a", 3).startswith("xmatch-xmatch-")
    live = next(grant for grant in grants if grant.resource == "transactional_id")
    assert live.kafka_acls_arguments("alerce") == (
        "--add --allow-principal User:alerce --operation Write "
        "--transactional-id xmatch-xmatch- --resource-pattern-type prefixed"
    )


def test_security_errors_name_the_user_the_server_and_what_to_check_never_the_password() -> None:
    from confluent_kafka import KafkaError

    from xmatch_pipeline.kafka.errors import (
        SecurityErrorRecorder,
        authorization_failure,
    )

    config = KafkaClientConfig(
        "broker:9093", "alerce", "s3cret-pw", credential_variables="CONSUMER_KAFKA_…"
    )
    recorder = SecurityErrorRecorder()
    recorder(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert recorder.failure(config) is None  # not a security error: the caller's own error
    recorder(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: invalid"))
    login = str(recorder.failure(config))
    refused = str(
        authorization_failure(
            config,
            KafkaError(KafkaError.CLUSTER_AUTHORIZATION_FAILED),
            operation="IDEMPOTENT_WRITE",
            resource="cluster",
            name="kafka-cluster",
        )
    )
    assert "authentication failed on broker:9093" in login
    assert "'alerce'" in login
    assert "CONSUMER_KAFKA_…" in login
    assert "--operation IdempotentWrite --cluster" in refused
    assert "s3cret-pw" not in login + refused
