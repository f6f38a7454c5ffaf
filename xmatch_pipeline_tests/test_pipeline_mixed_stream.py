"""10,000 messages of mixed good and bad kinds through consecutive runs: nothing blocks.

The runs are planned as the sensor plans them (``microbatch.planning.plan_runs`` over the group's
lag and the range ledger) and run by the pipeline's runner on the devstack's Kafka and
PostgreSQL, two partitions, until no lag is left. Every message must come out exactly once,
either enriched on the output topic or on the dead-letter topic with its kind's reason;
no run may fail and no partition may wait. Alerts are small (a compact ZTF-shaped schema)
so that the test stays within a minute.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from xmatch_pipeline.decode import decode_alert, encode_alert, schema_from_text
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.microbatch.planning import plan_runs
from xmatch_pipeline.services import PipelineServices
from xmatch_pipeline.settings import load_settings
from xmatch_pipeline_tests.pipeline_fixtures import (
    allwise_rows,
    compact_alert_schema,
    group_offsets,
    pipeline_environment,
    produce_values,
    query,
    read_committed,
    small_stream,
    unique_group,
)

pytestmark = pytest.mark.timeout(300)

MESSAGES = 10_000
PARTITIONS = 2
MAX_MESSAGES_PER_RUN = 2_000
#: Output and dead-letter topics accept less than Kafka's default, so that "too large"
#: alerts stay small for the input and still need cutting on the dead-letter topic.
TOPIC_LIMIT_BYTES = 20_000
LARGE_ALERT_BYTES = 30_000

SCHEMA = schema_from_text(
    json.dumps(
        compact_alert_schema(
            [
                {"name": "magpsf", "type": "float"},
                {"name": "programpi", "type": ["null", "string"]},
            ],
            [
                {
                    "name": "prv_candidates",
                    "type": ["null", {"type": "array", "items": "ztf.candidate"}],
                },
                {"name": "note", "type": "string"},
            ],
        )
    ).encode()
)

#: kind → (how many in 40 messages, a phrase of the dead letter's reason or None: output).
KINDS: dict[str, tuple[int, str | None]] = {
    "matching": (18, None),
    "not matching": (8, None),
    "ra beyond 360": (2, None),
    "garbage": (1, "not an Avro container"),
    "tombstone": (1, "tombstone"),
    "truncated": (1, "truncated"),
    "ra NaN": (1, "not finite"),
    "dec infinite": (1, "not finite"),
    "dec beyond the pole": (1, "beyond ±90"),
    "invalid UTF-8": (2, "UnicodeDecodeError"),
    "empty objectId": (1, "objectId is ''"),
    "too large": (3, "too large to publish"),
}
_CYCLE = [kind for kind, (count, _) in KINDS.items() for _ in range(count)]
assert len(_CYCLE) == 40


def _kind(index: int) -> str:
    return _CYCLE[(index * 7) % len(_CYCLE)]  # spread the kinds over both partitions


def _record(index: int, ra: float, dec: float) -> dict[str, Any]:
    candidate = {"ra": ra, "dec": dec, "magpsf": 18.5, "programpi": "Kulkarni"}
    return {
        "schemavsn": "3.3",
        "objectId": f"ZTF20mix{index:06d}",
        "candid": 2_000_000_000_000_000_000 + index,  # 64-bit, exact
        "candidate": candidate,
        "prv_candidates": [candidate | {"magpsf": 19.0}, candidate | {"programpi": None}],
        "note": "",
    }


def _message(index: int, sources: list[tuple[float, float]]) -> tuple[str | None, bytes | None]:
    """The message of ``index``: its kind's bytes, keyed by its objectId."""
    kind = _kind(index)
    ra, dec = sources[index % len(sources)]
    if kind == "not matching":
        dec = dec + 10 / 3600 if dec < 89 else dec - 10 / 3600
    record = _record(index, ra, dec)
    key = record["objectId"]
    if kind == "ra beyond 360":
        record["candidate"]["ra"] = ra + 360.0
    elif kind == "ra NaN":
        record["candidate"]["ra"] = math.nan
    elif kind == "dec infinite":
        record["candidate"]["dec"] = math.inf
    elif kind == "dec beyond the pole":
        record["candidate"]["dec"] = 95.0
    elif kind == "empty objectId":
        record["objectId"] = ""
    elif kind == "too large":
        record["note"] = "x" * LARGE_ALERT_BYTES
    elif kind == "garbage":
        return key, b"\x00\x01 not an alert"
    elif kind == "tombstone":
        return key, None
    value = encode_alert(record, SCHEMA)
    if kind == "truncated":
        return key, value[: len(value) - 20]
    if kind == "invalid UTF-8":
        at = value.rindex(b"Kulkarni")
        return key, value[:at] + b"\xc3\x28" + value[at + 2 :]
    return key, value


def test_ten_thousand_mixed_messages_come_out_exactly_once_and_nothing_waits(
    *,
    shared_data_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    kafka_bootstrap: str,
    fresh_database_url: str,
    new_topic: Callable[..., str],
) -> None:
    stream = small_stream(shared_data_dir, tmp_path_factory.mktemp("mixed-catalog"))
    sources = [(float(r["RAJ2000"]), float(r["DEJ2000"])) for r in allwise_rows(shared_data_dir)]
    limit = {"max.message.bytes": str(TOPIC_LIMIT_BYTES)}
    input_topic = new_topic("mixed-in", partitions=PARTITIONS)
    output_topic = new_topic("mixed-out", config=limit)
    dead_letter_topic = new_topic("mixed-dlq", config=limit)
    group_id = unique_group("mixed")
    environment = pipeline_environment(
        kafka_bootstrap=kafka_bootstrap,
        database_url=fresh_database_url,
        input_topic=input_topic,
        output_topic=output_topic,
        group_id=group_id,
        index_dir=stream.index_dir,
        XMATCH_DEAD_LETTER_TOPIC=dead_letter_topic,
        XMATCH_MAX_MESSAGES_PER_RUN=str(MAX_MESSAGES_PER_RUN),
    )
    messages = [_message(index, sources) for index in range(MESSAGES)]
    produce_values(kafka_bootstrap, input_topic, messages, partitions=PARTITIONS)
    services = PipelineServices(load_settings(environment))
    runner = services.runner()
    settings = services.settings

    ran: list[OffsetRange] = []
    try:
        for _ in range(20):  # sensor ticks
            plan = plan_runs(
                services.offsets_reader.lags([input_topic]),
                services.ledger.entry_starting_at,
                services.ledger.is_partition_held,
                {},  # nothing in flight: each run ends before the next tick
                max_messages_per_run=settings.max_messages_per_run,
                max_attempts=settings.max_run_attempts,
            )
            assert not plan.skips, plan.skips  # no partition ever waits
            if not plan.runs:
                break
            for planned in plan.runs:
                assert planned.attempt == 1, planned  # no range ever fails
                runner.run(planned.offset_range, run_id=f"mixed-{len(ran)}")
                ran.append(planned.offset_range)
    finally:
        services.dispose()

    # Consecutive ranges of at most 2,000 offsets, 5,000 per partition: three runs each.
    assert len(ran) == 6
    assert group_offsets(kafka_bootstrap, group_id, input_topic) == {0: 5_000, 1: 5_000}
    output = read_committed(kafka_bootstrap, output_topic)
    dead_letters = read_committed(kafka_bootstrap, dead_letter_topic)
    assert len(output) + len(dead_letters) == MESSAGES

    # Every good alert once on the output, enriched; every bad one once on the dead letters.
    expected_output = {
        2_000_000_000_000_000_000 + index
        for index in range(MESSAGES)
        if KINDS[_kind(index)][1] is None
    }
    candids = [decode_alert(message.value).candid for message in output]
    assert len(candids) == len(set(candids))
    assert set(candids) == expected_output
    matched = sum(1 for m in output if decode_alert(m.value).record["xmatches"] is not None)
    not_matching = sum(1 for index in range(MESSAGES) if _kind(index) == "not matching")
    assert matched == len(expected_output) - not_matching

    origins = Counter(
        (int(m.headers["origin.partition"]), int(m.headers["origin.offset"])) for m in dead_letters
    )
    assert max(origins.values()) == 1
    for letter in dead_letters:
        partition, offset = (
            int(letter.headers["origin.partition"]),
            int(letter.headers["origin.offset"]),
        )
        index = offset * PARTITIONS + partition  # produced round-robin
        reason = KINDS[_kind(index)][1]
        assert reason is not None, _kind(index)
        assert reason in letter.headers["reason"].decode(), (_kind(index), letter.headers)
        assert letter.tombstone is (_kind(index) == "tombstone")
        if _kind(index) == "too large":
            assert (
                letter.headers["value.truncated.from"]
                == str(len(messages[index][1] or b"")).encode()
            )
        else:
            assert letter.value == (messages[index][1] or b"")

    ledger = query(
        fresh_database_url,
        "SELECT status, attempts, alerts_in, dead_lettered FROM offset_range_ledger "
        "WHERE topic = :topic AND consumer_group = :group",
        topic=input_topic,
        group=group_id,
    )
    assert {(status, attempts) for status, attempts, _, _ in ledger} == {("succeeded", 1)}
    assert sum(row[2] for row in ledger) == MESSAGES
    assert sum(row[3] for row in ledger) == len(dead_letters)
