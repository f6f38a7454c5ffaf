"""Variants of Rubin's sample alerts (``alert_tools.lsst_samples``): ``variant``
re-encodes a sample with other ids and another position, with the packaged schema, so a
stream of one version can hold many distinct alerts."""

from __future__ import annotations

import copy
import io

import fastavro

from xmatch_pipeline.decode.lsst_alert import DECLINATION_FIELDS
from xmatch_pipeline.decode.lsst_schemas import packaged_lsst_schemas
from xmatch_pipeline.devtools.alert_tools.lsst_samples import SampleAlert, sample_alerts

__all__ = ["SampleAlert", "sample_alerts", "variant"]


def variant(
    sample: SampleAlert, *, dia_source_id: int, dia_object_id: int, ra: float, dec: float
) -> SampleAlert:
    """The sample with other ids and position, encoded with its packaged schema."""
    record = copy.deepcopy(sample.record)
    source = record["diaSource"]
    source["diaSourceId"] = dia_source_id
    source["ra"] = ra
    for name in DECLINATION_FIELDS:
        if name in source:
            source[name] = dec
    source["diaObjectId"] = dia_object_id
    if "diaSourceId" in record:
        record["diaSourceId"] = dia_source_id
    if isinstance(record.get("diaObject"), dict):
        record["diaObject"]["diaObjectId"] = dia_object_id
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, packaged_lsst_schemas()[sample.schema_id].parsed, record)
    return SampleAlert(sample.schema_id, record, buffer.getvalue())
