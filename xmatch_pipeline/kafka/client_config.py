"""Connection settings shared by every Kafka client, with the password kept out of logs.

As in the original step's later versions, a username and password switch the connection to
``SASL_SSL`` with ``SCRAM-SHA-512``; without them the connection is plaintext. Each client
(range reader, offsets reader, transactional producer) adds its own settings on top.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

ConfigValue = str | int | float | bool
"""A value librdkafka accepts in a configuration dictionary."""

REDACTED = "********"
SECRET_KEYS = frozenset({"sasl.password", "ssl.key.password", "sasl.oauthbearer.client.secret"})


class KafkaOperationError(RuntimeError):
    """A Kafka call failed; the message says which call, on what, and what to do."""


@dataclass(frozen=True, repr=False)
class KafkaClientConfig:
    """Bootstrap servers, optional SCRAM credentials and extra librdkafka settings."""

    bootstrap_servers: str
    username: str | None = None
    password: str | None = None
    extra: Mapping[str, ConfigValue] = field(default_factory=lambda: MappingProxyType({}))
    credential_variables: str = "the Kafka username and password"
    """Where the credentials came from, for error messages (e.g. ``CONSUMER_KAFKA_…``)."""

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ValueError("Kafka bootstrap servers must not be empty (e.g. 'host:9092')")
        if (self.username is None) != (self.password is None):
            raise ValueError(
                "Kafka username and password go together (SASL_SSL with SCRAM-SHA-512): "
                "give both or neither"
            )
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    def as_dict(self, overrides: Mapping[str, ConfigValue] | None = None) -> dict[str, ConfigValue]:
        """The librdkafka dictionary, with a client's own settings (dotted keys) on top."""
        config: dict[str, ConfigValue] = {"bootstrap.servers": self.bootstrap_servers}
        if self.username is not None and self.password is not None:
            config.update(
                {
                    "security.protocol": "SASL_SSL",
                    "sasl.mechanisms": "SCRAM-SHA-512",
                    "sasl.username": self.username,
                    "sasl.password": self.password,
                }
            )
        config.update(self.extra)
        config.update(overrides or {})
        return config

    def with_settings(self, settings: Mapping[str, ConfigValue]) -> KafkaClientConfig:
        """A copy with more librdkafka settings (dotted keys), later ones winning."""
        return KafkaClientConfig(
            self.bootstrap_servers,
            self.username,
            self.password,
            {**self.extra, **settings},
            self.credential_variables,
        )

    def __repr__(self) -> str:
        return f"KafkaClientConfig({redacted(self.as_dict())!r})"

    __str__ = __repr__


def redacted(config: Mapping[str, ConfigValue]) -> dict[str, ConfigValue]:
    """A copy safe to log: secrets replaced by asterisks."""
    return {key: REDACTED if key in SECRET_KEYS else value for key, value in config.items()}
