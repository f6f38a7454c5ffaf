"""What the UI draws as lineage: input topics → crossmatch tables → output topic."""

from dagster import AssetKey, AssetSpec

INPUT_TOPICS = AssetKey(["kafka", "ztf_alerts"])
CROSSMATCH_TABLES = AssetKey(["postgres", "allwise_xmatch"])
OUTPUT_TOPIC = AssetKey(["kafka", "xmatch"])
DEAD_LETTER_TOPIC = AssetKey(["kafka", "xmatch_dead_letters"])


def _spec(
    key: AssetKey, kind: str, description: str, *, upstream: AssetKey | None = None
) -> AssetSpec:
    return AssetSpec(
        key,
        deps=[upstream] if upstream is not None else [],
        description=description,
        group_name="xmatch",
        kinds={kind},
    )


ASSET_SPECS = [
    _spec(
        INPUT_TOPICS,
        "kafka",
        "ZTF alert topics (Avro, one alert per message); lag observed by kafka_lag_sensor.",
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
