"""Kafka client configuration: SCRAM over SSL from credentials, never a password in a log."""

from __future__ import annotations

import pytest

from xmatch_pipeline.kafka_config import KafkaClientConfig, redacted


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
