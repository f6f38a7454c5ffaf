"""Security failures from Kafka told plainly: what was refused, where, and what to check.

librdkafka does not fail a call when the broker refuses the credentials: it reports the
refusal to the client's ``error_cb`` and keeps reconnecting, so the call itself only
times out ("all brokers down"). Every client therefore records what its ``error_cb``
hears (:class:`SecurityErrorRecorder`) and turns a timeout into
:class:`KafkaAuthenticationError` when the cause was authentication or TLS. A refused ACL
comes back as the call's own error code; :func:`authorization_failure` names the
permission and the ``kafka-acls.sh`` line that grants it. No message ever holds a secret.
"""

from __future__ import annotations

from confluent_kafka import KafkaError

from xmatch_pipeline.kafka.client_config import KafkaClientConfig, KafkaOperationError

AUTHENTICATION_CODES = frozenset(
    {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
)
TLS_CODES = frozenset({KafkaError._SSL})
AUTHORIZATION_CODES = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    }
)
_RESOURCE_OPTIONS = {
    "topic": "--topic",
    "group": "--group",
    "transactional_id": "--transactional-id",
    "cluster": "--cluster",
}


class KafkaAuthenticationError(KafkaOperationError):
    """The broker refused the client's credentials, or the TLS handshake failed."""


class KafkaAuthorizationError(KafkaOperationError):
    """The broker refused an operation: the principal lacks an ACL."""


class SecurityErrorRecorder:
    """An ``error_cb`` that keeps the first authentication or TLS error a client reports."""

    def __init__(self) -> None:
        self.first: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        if self.first is None and error.code() in AUTHENTICATION_CODES | TLS_CODES:
            self.first = error

    def failure(self, config: KafkaClientConfig) -> KafkaAuthenticationError | None:
        """The error to raise instead of a timeout, if the cause was security."""
        return None if self.first is None else authentication_failure(config, self.first)


def principal_of(config: KafkaClientConfig) -> str:
    """The principal the broker sees: the SCRAM user, or ANONYMOUS on a plaintext listener."""
    return f"User:{config.username}" if config.username is not None else "User:ANONYMOUS"


def authentication_failure(
    config: KafkaClientConfig, error: KafkaError
) -> KafkaAuthenticationError:
    servers = config.bootstrap_servers
    if error.code() in TLS_CODES:
        return KafkaAuthenticationError(
            f"the TLS handshake with Kafka on {servers} failed ({error.str()}); check that "
            "XMATCH_KAFKA_SSL_CA_LOCATION names the CA certificate that signed the broker's "
            "certificate and that the address is the broker's SASL_SSL listener"
        )
    return KafkaAuthenticationError(
        f"Kafka authentication failed on {servers}: the broker refused user "
        f"{config.username!r} (SASL_SSL, SCRAM-SHA-512): {error.str()}. Check "
        f"{config.credential_variables} and that this user has a SCRAM-SHA-512 credential "
        "on that cluster (kafka-configs.sh --describe --entity-type users)"
    )


def kafka_acls_arguments(
    principal: str, operation: str, resource: str, name: str, *, prefixed: bool = False
) -> str:
    """``kafka-acls.sh`` arguments granting one operation on one resource."""
    pattern = " --resource-pattern-type prefixed" if prefixed else ""
    target = "--cluster" if resource == "cluster" else f"{_RESOURCE_OPTIONS[resource]} {name}"
    operation_name = "".join(part.title() for part in operation.split("_"))
    return f"--add --allow-principal {principal} --operation {operation_name} {target}{pattern}"


def authorization_failure(
    config: KafkaClientConfig,
    error: KafkaError,
    *,
    operation: str,
    resource: str,
    name: str,
    prefixed: bool = False,
) -> KafkaAuthorizationError:
    """The refusal as the missing permission and the command that grants it."""
    principal = principal_of(config)
    described = f"{resource.replace('_', ' ')} {name!r}" + (" (prefix)" if prefixed else "")
    grant = kafka_acls_arguments(principal, operation, resource, name, prefixed=prefixed)
    return KafkaAuthorizationError(
        f"Kafka on {config.bootstrap_servers} refused {principal}: it lacks the "
        f"{operation.upper()} permission on {described} ({error.name()}). Grant it, e.g. "
        f"kafka-acls.sh --bootstrap-server {config.bootstrap_servers} {grant}"
    )
