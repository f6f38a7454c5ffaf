"""The one-line view of an alert that operators grep and tests compare."""

from __future__ import annotations

import json
from typing import Any

from xmatch_pipeline.decode import DecodedAlert


def alert_summary(alert: DecodedAlert) -> dict[str, Any]:
    """``objectId, candid, ra, dec, schemavsn``; ra/dec are the candidate's, as doubles."""
    return {
        "objectId": alert.object_id,
        "candid": int(alert.candid),
        "ra": float(alert.ra),
        "dec": float(alert.dec),
        "schemavsn": alert.schema_version,
    }


def summary_json_line(alert: DecodedAlert) -> str:
    """The summary as one JSON line; ``repr`` floats keep every bit, ``candid`` stays an int."""
    return json.dumps(alert_summary(alert), allow_nan=False)
