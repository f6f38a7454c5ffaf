"""Header-only decode of the real ZTF alerts: the pipeline's scan against fastavro's reads.

Measures, per alert, CPU time (``process_time``, so other processes on the machine weigh
less) of: the scan (``record_scan``, what the pipeline runs), fastavro with the validating
projection (``reader_projection``, the fallback), fastavro with the routing fields only (the
decode before strings were checked: it let invalid UTF-8 through), and a full read. Each
variant's best of 5 passes, median over 15 rounds interleaved::

    .venv/bin/python -m bench.header_decode [--alerts DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro

from xmatch_pipeline.decode.alert_schema import AlertSchema, schema_from_text
from xmatch_pipeline.decode.container import read_container

DEFAULT_ALERTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ztf-alerts"


def _routing_fields_only(schema: AlertSchema) -> dict[str, Any]:
    """The reader schema of the decode before: objectId, candid, schemavsn, ra, dec."""
    document = json.loads(schema.text)
    fields = {entry["name"]: entry for entry in document["fields"]}
    candidate = fields["candidate"]["type"]
    reader_candidate = {k: candidate[k] for k in ("type", "name", "namespace") if k in candidate}
    reader_candidate["fields"] = [{"name": n, "type": "double"} for n in ("ra", "dec")]
    reader = {k: document[k] for k in ("type", "name", "namespace") if k in document}
    reader["fields"] = [
        {"name": n, "type": fields[n]["type"]} for n in ("schemavsn", "objectId", "candid")
    ] + [{"name": "candidate", "type": reader_candidate}]
    parsed = fastavro.parse_schema(reader, named_schemas={})
    assert isinstance(parsed, dict)
    return parsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=Path, default=DEFAULT_ALERTS)
    arguments = parser.parse_args()
    containers = [read_container(p.read_bytes()) for p in sorted(arguments.alerts.rglob("*.avro"))]
    alerts = [(bytes(c.blocks[0].payload), schema_from_text(c.schema_text)) for c in containers]
    before = {id(schema): _routing_fields_only(schema) for _, schema in alerts}

    def fastavro_read(reader: Callable[[AlertSchema], Any]) -> Callable[[bytes, AlertSchema], Any]:
        return lambda payload, schema: fastavro.schemaless_reader(
            io.BytesIO(payload), schema.parsed, reader(schema)
        )

    variants: dict[str, Callable[[bytes, AlertSchema], Any]] = {
        "scan (the pipeline now)": lambda payload, schema: schema.header_scanner(payload),  # type: ignore[misc]
        "fastavro, validating projection": fastavro_read(lambda s: s.header_reader),
        "fastavro, routing fields only (before)": fastavro_read(lambda s: before[id(s)]),
        "fastavro, full read": fastavro_read(lambda s: None),
    }
    assert all(schema.header_scanner is not None for _, schema in alerts)

    def per_alert_ms(decode: Callable[[bytes, AlertSchema], Any]) -> float:
        started = time.process_time()
        for payload, schema in alerts:
            decode(payload, schema)
        return (time.process_time() - started) / len(alerts) * 1e3

    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(15):
        for name, decode in variants.items():
            results[name].append(min(per_alert_ms(decode) for _ in range(5)))
    print(f"{len(alerts)} real ZTF alerts, CPU ms per alert (median of 15 rounds, min-max):")
    for name, values in results.items():
        print(
            f"  {name:40s} {statistics.median(values):.3f}  ({min(values):.3f}-{max(values):.3f})"
        )


if __name__ == "__main__":
    main()
