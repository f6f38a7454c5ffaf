"""What the UI draws as lineage: input topics → crossmatch tables → output topic. The
assets a run writes are partitioned by offset range (``partitions.OFFSET_RANGES``)."""

from dagster import AssetKey, AssetSpec, PartitionsDefinition

from xmatch_pipeline.orchestration.partitions import OFFSET_RANGES

INPUT_TOPICS = AssetKey(["kafka", "ztf_alerts"])
CROSSMATCH_TABLES = AssetKey(["postgres", "allwise_xmatch"])
OUTPUT_TOPIC = AssetKey(["kafka", "xmatch"])
DEAD_LETTER_TOPIC = AssetKey(["kafka", "xmatch_dead_letters"])


def _spec(
    key: AssetKey,
    kind: str,
    description: str,
    *,
    upstream: AssetKey | None = None,
    partitions_def: PartitionsDefinition | None = OFFSET_RANGES,
) -> AssetSpec:
    return AssetSpec(
        key,
        deps=[upstream] if upstream is not None else [],
        description=description,
        group_name="xmatch",
        kinds={kind},
        partitions_def=partitions_def,
    )


ASSET_SPECS = [
    _spec(
        INPUT_TOPICS,
        "kafka",
        "ZTF alert topics (Avro, one alert per message); lag observed by kafka_lag_sensor.",
        partitions_def=None,
    ),
    _spec(
        CROSSMATCH_TABLES,
        "postgres",
        "PostgreSQL tables object, allwise, xmatch and step (ALeRCE db-plugins), and each "
        "stored catalog's own table (gaia_dr3).",
        upstream=INPUT_TOPICS,
    ),
    _spec(
        OUTPUT_TOPIC,
        "kafka",
        "Enriched alerts: the input alert plus xmatches (and their provenance), key objectId.",
        upstream=CROSSMATCH_TABLES,
    ),
    _spec(
        DEAD_LETTER_TOPIC,
        "kafka",
        "Undecodable input messages with their reason and origin in headers.",
        upstream=INPUT_TOPICS,
    ),
]
