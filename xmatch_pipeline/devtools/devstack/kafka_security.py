"""The broker's SASL_SSL listener: its settings, its SCRAM users and their ACLs.

The devstack's broker always has two client listeners. PLAINTEXT, as before, where every
client is ``User:ANONYMOUS``, a super user, so tests and tools that do not care about
security work unchanged. SASL_SSL, with SCRAM-SHA-512 over TLS (the devstack's own CA,
:mod:`~xmatch_pipeline.devtools.devstack.kafka_tls`), where a user may do only what an ACL grants
(KRaft's ``StandardAuthorizer``). Users and ACLs are created through the PLAINTEXT
listener with the admin API, on the running broker (KRaft keeps SCRAM credentials in its
metadata log since Kafka 3.5), so a data folder formatted before the listener existed
gets them too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from xmatch_pipeline.devtools.devstack.errors import ServiceStartError
from xmatch_pipeline.devtools.devstack.kafka_tls import TlsFiles
from xmatch_pipeline.kafka.acls import AclGrant

SASL_LISTENER = "SASL_SSL"
SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192
ADMIN_TIMEOUT_SECONDS = 30.0
#: The devstack user's grants: the demo's topics and any group or transactional id of the
#: pipeline (``xmatch-…``). Tests create their own users with exact ACLs instead.
DEVSTACK_USER_GRANTS = (
    AclGrant("reader", "topic", "ztf_", "READ", prefixed=True),
    AclGrant("reader", "group", "xmatch", "READ", prefixed=True),
    AclGrant("publisher", "topic", "xmatch", "WRITE", prefixed=True),
    AclGrant("publisher", "transactional_id", "xmatch-", "WRITE", prefixed=True),
)

_RESOURCE_TYPES = {
    "topic": ResourceType.TOPIC,
    "group": ResourceType.GROUP,
    "transactional_id": ResourceType.TRANSACTIONAL_ID,
}


def sasl_listener_properties(tls: TlsFiles) -> dict[str, str]:
    """The broker settings the SASL_SSL listener adds (merged into the PLAINTEXT ones)."""
    listener = SASL_LISTENER.lower()
    return {
        f"listener.name.{listener}.sasl.enabled.mechanisms": SCRAM_MECHANISM,
        f"listener.name.{listener}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        f"listener.name.{listener}.ssl.keystore.type": "PEM",
        f"listener.name.{listener}.ssl.keystore.location": str(tls.broker_keystore),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        # PLAINTEXT and the controller listener authenticate nobody: their anonymous
        # clients (every test, tool and the broker itself) keep full rights.
        "super.users": "User:ANONYMOUS",
        "allow.everyone.if.no.acl.found": "false",
    }


def _admin(bootstrap_servers: str) -> AdminClient:
    # log_level 4: no info lines about the background queue when the client is released.
    return AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 4})


def create_scram_user(admin_bootstrap: str, username: str, password: str) -> None:
    """Create or reset a SCRAM-SHA-512 user (through a super user's listener)."""
    upsertion = UserScramCredentialUpsertion(
        username,
        ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS),
        password.encode(),
    )
    admin = _admin(admin_bootstrap)  # kept alive until the futures complete
    futures = admin.alter_user_scram_credentials([upsertion], request_timeout=ADMIN_TIMEOUT_SECONDS)
    _wait(futures.values(), f"creating the SCRAM user {username!r}")


def acl_binding(grant: AclGrant, username: str) -> AclBinding:
    pattern = ResourcePatternType.PREFIXED if grant.prefixed else ResourcePatternType.LITERAL
    return AclBinding(
        _RESOURCE_TYPES[grant.resource],
        grant.name,
        pattern,
        f"User:{username}",
        "*",
        AclOperation[grant.operation],
        AclPermissionType.ALLOW,
    )


def grant_acls(admin_bootstrap: str, username: str, grants: Sequence[AclGrant]) -> None:
    """Add the ALLOW entries (existing ones are kept; adding one twice is harmless)."""
    if not grants:
        return
    admin = _admin(admin_bootstrap)  # kept alive until the futures complete
    futures = admin.create_acls(
        [acl_binding(grant, username) for grant in grants], request_timeout=ADMIN_TIMEOUT_SECONDS
    )
    _wait(futures.values(), f"granting ACLs to {username!r}")


def provision_devstack_user(admin_bootstrap: str, username: str, password: str) -> None:
    """The devstack's ready-made SASL user with the demo's grants (idempotent)."""
    create_scram_user(admin_bootstrap, username, password)
    grant_acls(admin_bootstrap, username, DEVSTACK_USER_GRANTS)


def _wait(futures: Iterable[object], what: str) -> None:
    for future in futures:
        try:
            future.result(timeout=ADMIN_TIMEOUT_SECONDS)  # type: ignore[attr-defined]
        except KafkaException as exception:
            raise ServiceStartError(
                f"{what} failed: {exception.args[0]}; see the broker's log (kafka.log)"
            ) from exception
