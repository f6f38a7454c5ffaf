"""The Kafka ACLs the pipeline needs on a cluster with an authorizer, and no more.

Two principals do the work: the reader (``CONSUMER_KAFKA_USERNAME``: the range reader and
the sensor's offset reads) and the publisher (``PRODUCER_KAFKA_USERNAME``, the reader's
when unset: the transactional producer that writes the output and dead letters and commits
the group's offsets in its transaction). When both are one user it needs the union. The
list is checked on a real broker with an authorizer (``test_kafka_sasl``): a run succeeds
with exactly these grants, and without the publisher's output WRITE, input READ, group
READ or transactional-id WRITE it fails with an error naming the missing one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from xmatch_pipeline.kafka.errors import kafka_acls_arguments
from xmatch_pipeline.publish.kafka_transaction import (
    BACKFILL_TRANSACTIONAL_ID_PREFIX,
    live_transactional_id_prefix,
)

Role = Literal["reader", "publisher", "metrics"]
ResourceKind = Literal["topic", "group", "transactional_id"]
Operation = Literal["READ", "WRITE", "DESCRIBE"]


@dataclass(frozen=True)
class AclGrant:
    """One ALLOW entry: ``operation`` on a resource, literal name or name prefix."""

    role: Role
    resource: ResourceKind
    name: str
    operation: Operation
    prefixed: bool = False
    why: str = ""

    def kafka_acls_arguments(self, username: str) -> str:
        """The same grant as ``kafka-acls.sh`` arguments, for an operator to paste."""
        return kafka_acls_arguments(
            f"User:{username}", self.operation, self.resource, self.name, prefixed=self.prefixed
        )


def pipeline_acls(
    *,
    input_topics: Sequence[str],
    consumer_group: str,
    output_topic: str,
    dead_letter_topic: str,
    metrics_topic: str | None = None,
    backfills: bool = True,
) -> list[AclGrant]:
    """Every grant a deployment needs, by role (input topics as literal names)."""
    grants = [
        AclGrant("reader", "topic", topic, "READ", why="fetch the run's range; watermarks")
        for topic in input_topics
    ]
    grants += [
        AclGrant("reader", "group", consumer_group, "DESCRIBE", why="the sensor reads its offsets"),
        AclGrant("publisher", "topic", output_topic, "WRITE", why="the enriched alerts"),
        AclGrant("publisher", "topic", dead_letter_topic, "WRITE", why="the dead letters"),
        *(
            AclGrant(
                "publisher",
                "topic",
                topic,
                "READ",
                why="commit its offsets in the transaction (Kafka checks the topic too)",
            )
            for topic in input_topics
        ),
        AclGrant(
            "publisher",
            "group",
            consumer_group,
            "READ",
            why="commit the input offsets inside the transaction",
        ),
        AclGrant(
            "publisher",
            "transactional_id",
            live_transactional_id_prefix(consumer_group),
            "WRITE",
            prefixed=True,
            why="one transactional id per input partition",
        ),
    ]
    if backfills:
        grants.append(
            AclGrant(
                "publisher",
                "transactional_id",
                BACKFILL_TRANSACTIONAL_ID_PREFIX,
                "WRITE",
                prefixed=True,
                why="backfills with produce_output: one id per range",
            )
        )
    if metrics_topic is not None:
        grants.append(
            AclGrant("metrics", "topic", metrics_topic, "WRITE", why="the metrics message")
        )
    return grants
