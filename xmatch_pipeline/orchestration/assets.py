"""What the UI draws as lineage: input topics → crossmatch tables → output topic."""

from dagster import AssetKey, AssetSpec

INPUT_TOPICS = AssetKey(["kafka", "ztf_alerts"])
CROSSMATCH_TABLES = AssetKey(["postgres", "allwise_xmatch"])
OUTPUT_TOPIC = AssetKey(["kafka", "xmatch"])
DEAD_LETTER_TOPIC = AssetKey(["kafka", "xmatch_dead_letters"])

ASSET_SPECS = [
    AssetSpec(
        INPUT_TOPICS,
        description="ZTF alert topics (Avro, one alert per message); lag observed by "
        "kafka_lag_sensor.",
        group_name="xmatch",
        kinds={"kafka"},
    ),
    AssetSpec(
        CROSSMATCH_TABLES,
        deps=[INPUT_TOPICS],
        description="PostgreSQL tables object, allwise, xmatch and step (ALeRCE db-plugins).",
        group_name="xmatch",
        kinds={"postgres"},
    ),
    AssetSpec(
        OUTPUT_TOPIC,
        deps=[CROSSMATCH_TABLES],
        description="Enriched alerts: the input alert plus xmatches, key objectId.",
        group_name="xmatch",
        kinds={"kafka"},
    ),
    AssetSpec(
        DEAD_LETTER_TOPIC,
        deps=[INPUT_TOPICS],
        description="Undecodable input messages with their reason and origin in headers.",
        group_name="xmatch",
        kinds={"kafka"},
    ),
]
