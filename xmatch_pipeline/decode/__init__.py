"""Avro codec for ZTF alerts: Kafka message bytes to records and back."""

from xmatch_pipeline.decode.alert_schema import (
    AlertSchema,
    schema_from_json,
    schema_from_text,
    ztf_alert_schema,
)
from xmatch_pipeline.decode.avro_codec import DecodedAlert, decode_alert, encode_alert
from xmatch_pipeline.decode.errors import AlertDecodeError

__all__ = [
    "AlertDecodeError",
    "AlertSchema",
    "DecodedAlert",
    "decode_alert",
    "encode_alert",
    "schema_from_json",
    "schema_from_text",
    "ztf_alert_schema",
]
