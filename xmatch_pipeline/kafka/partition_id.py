"""One topic partition as a plain, hashable value: the key of every per-partition mapping.

confluent-kafka's ``TopicPartition`` also carries an offset and is not hashable by its
name alone, so the pipeline's own code uses ``(topic, partition)`` and converts at the
client's edge.
"""

from typing import TypeAlias

PartitionId: TypeAlias = tuple[str, int]
