"""Bad input never blocks a partition: each kind through a real range run.

Each test writes a few alerts around one bad message to a fresh input topic and runs the
range with the pipeline's own runner on the devstack's Kafka and PostgreSQL: the bad one
must reach the dead-letter topic with its reason and its original value, the others the
output, and the range must commit its offsets.
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from xmatch_pipeline.decode import decode_alert, encode_alert, schema_from_text
from xmatch_pipeline.decode.container import read_container
from xmatch_pipeline.decode.schema_text import with_last_field
from xmatch_pipeline.devtools.alert_tools.synthetic import SyntheticAlertFactory
from xmatch_pipeline.kafka.client_config import KafkaClientConfig
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.microbatch.report import MicrobatchReport
from xmatch_pipeline.microbatch.runner import (
    GroupNotAtRangeStartError,
    MicrobatchError,
    MicrobatchRunner,
)
from xmatch_pipeline.publish.dead_letter import DEAD_LETTER_CUT_BYTES
from xmatch_pipeline.publish.enriched_alert import appended_fields
from xmatch_pipeline.services import PipelineServices
from xmatch_pipeline.settings import load_settings
from xmatch_pipeline.store.errors import DatabaseUnavailableError
from xmatch_pipeline_tests.pipeline_fixtures import (
    ReceivedMessage,
    allwise_rows,
    group_offsets,
    pipeline_environment,
    produce_values,
    query,
    read_committed,
    small_stream,
    unique_group,
)

pytestmark = pytest.mark.timeout(180)

#: Alerts placed on real ALLWISE sources: every good alert here matches.
SOURCES = 12


@dataclass
class RangeOutcome:
    report: MicrobatchReport
    output: list[ReceivedMessage]
    dead_letters: list[ReceivedMessage]


@dataclass
class BadInputCase:
    kafka_bootstrap: str
    database_url: str
    input_topic: str
    output_topic: str
    dead_letter_topic: str
    group_id: str
    services: PipelineServices
    factory: SyntheticAlertFactory

    def record(self, index: int) -> dict[str, Any]:
        return self.factory.record(index)

    def value(self, record: dict[str, Any]) -> bytes:
        return encode_alert(record, self.factory.schema)

    def good(self, index: int) -> tuple[str, bytes]:
        record = self.record(index)
        return record["objectId"], self.value(record)

    def runner(self) -> MicrobatchRunner:
        return self.services.runner()

    def run(self, messages: list[tuple[str | None, bytes | None]]) -> RangeOutcome:
        """Write the messages and run their range live, once."""
        start = group_offsets(self.kafka_bootstrap, self.group_id, self.input_topic)[0] or 0
        produce_values(self.kafka_bootstrap, self.input_topic, messages)
        offset_range = OffsetRange(self.input_topic, 0, start, start + len(messages))
        report = self.runner().run(offset_range, run_id=f"bad-input-{start}")
        return RangeOutcome(
            report,
            read_committed(self.kafka_bootstrap, self.output_topic),
            read_committed(self.kafka_bootstrap, self.dead_letter_topic),
        )

    def stored_object_ids(self) -> set[str]:
        return {row[0] for row in query(self.database_url, "SELECT oid FROM object")}


@pytest.fixture
def case_factory(
    *,
    shared_data_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    kafka_bootstrap: str,
    fresh_database_url: str,
    new_topic: Callable[..., str],
) -> Iterator[Callable[..., BadInputCase]]:
    """A fresh input, output and dead-letter topic (topic configs as given) per case."""
    stream = small_stream(shared_data_dir, tmp_path_factory.mktemp("bad-input-catalog"))
    rows = allwise_rows(shared_data_dir)[:SOURCES]
    positions = [(float(row["RAJ2000"]), float(row["DEJ2000"])) for row in rows]
    made: list[PipelineServices] = []

    def make(
        output_config: dict[str, str] | None = None,
        dead_letter_config: dict[str, str] | None = None,
    ) -> BadInputCase:
        input_topic = new_topic("bad-in")
        output_topic = new_topic("bad-out", config=output_config)
        dead_letter_topic = new_topic("bad-dlq", config=dead_letter_config)
        group_id = unique_group("bad-input")
        environment = pipeline_environment(
            kafka_bootstrap=kafka_bootstrap,
            database_url=fresh_database_url,
            input_topic=input_topic,
            output_topic=output_topic,
            group_id=group_id,
            index_dir=stream.index_dir,
            XMATCH_DEAD_LETTER_TOPIC=dead_letter_topic,
        )
        services = PipelineServices(load_settings(environment))
        made.append(services)
        return BadInputCase(
            kafka_bootstrap,
            fresh_database_url,
            input_topic,
            output_topic,
            dead_letter_topic,
            group_id,
            services,
            SyntheticAlertFactory(seed=len(made) * 7919, positions=positions),
        )

    yield make
    for services in made:
        services.dispose()


def _with_candidate(case: BadInputCase, index: int, **fields: Any) -> bytes:
    record = case.record(index)
    record["candidate"] = record["candidate"] | fields
    return case.value(record)


def _with_object_id(case: BadInputCase, index: int, object_id: str) -> bytes:
    return case.value(case.record(index) | {"objectId": object_id})


def _invalid_utf8_in_history(case: BadInputCase, index: int) -> bytes:
    """``prv_candidates[-1].programpi`` holds an invalid byte: a field the header-only
    decode skips, which only a full reader would have checked."""
    value = case.value(case.record(index))
    at = value.rindex(b"Kulkarni")
    return value[:at] + b"\xffulkarni" + value[at + 8 :]


BAD_KINDS: dict[str, tuple[Callable[[BadInputCase, int], bytes | None], str, str]] = {
    # kind: (the bad value, a phrase of its reason, its error type)
    "not an Avro container": (
        lambda case, index: b"not an avro container",
        "not an Avro container",
        "AlertDecodeError",
    ),
    "a tombstone": (lambda case, index: None, "tombstone", "AlertDecodeError"),
    "a truncated alert": (
        lambda case, index: case.value(case.record(index))[:5000],
        "truncated",
        "AlertDecodeError",
    ),
    "invalid UTF-8 in a skipped field": (
        _invalid_utf8_in_history,
        "UnicodeDecodeError",
        "AlertDecodeError",
    ),
    "ra NaN": (
        lambda case, index: _with_candidate(case, index, ra=math.nan),
        "not finite",
        "PositionOffSkyError",
    ),
    "dec infinite": (
        lambda case, index: _with_candidate(case, index, dec=-math.inf),
        "not finite",
        "PositionOffSkyError",
    ),
    "dec beyond the pole": (
        lambda case, index: _with_candidate(case, index, dec=90.5),
        "beyond ±90",
        "PositionOffSkyError",
    ),
    "an empty objectId": (
        lambda case, index: _with_object_id(case, index, ""),
        "objectId is ''",
        "ObjectIdError",
    ),
    "an objectId PostgreSQL cannot store": (
        lambda case, index: _with_object_id(case, index, "ZTF20\x00abc"),
        "NUL",
        "ObjectIdError",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_KINDS))
def test_a_bad_alert_is_dead_lettered_with_its_reason_and_the_range_commits(
    kind: str, case_factory: Callable[..., BadInputCase]
) -> None:
    case = case_factory()
    make_bad, reason, error_type = BAD_KINDS[kind]
    bad = make_bad(case, 1)
    good = [case.good(0), case.good(2), case.good(3)]

    outcome = case.run([good[0], ("bad-key", bad), good[1], good[2]])

    assert sorted(decode_alert(m.value).object_id for m in outcome.output) == sorted(
        object_id for object_id, _ in good
    )
    assert all(decode_alert(m.value).record["xmatches"] for m in outcome.output)
    (letter,) = outcome.dead_letters
    assert letter.key == b"bad-key"
    assert letter.tombstone is (bad is None)
    assert letter.value == (bad or b"")
    assert reason in letter.headers["reason"].decode()
    assert letter.headers["error.type"] == error_type.encode()
    assert letter.headers["origin.topic"] == case.input_topic.encode()
    assert letter.headers["origin.offset"] == b"1"
    assert (outcome.report.produced, outcome.report.dead_lettered) == (3, 1)
    assert group_offsets(case.kafka_bootstrap, case.group_id, case.input_topic) == {0: 4}
    # A dead-lettered alert leaves no database row behind.
    if kind in ("ra NaN", "dec infinite", "dec beyond the pole"):
        assert case.record(1)["objectId"] not in case.stored_object_ids()


def test_an_ra_outside_0_360_is_matched_where_it_points(
    case_factory: Callable[..., BadInputCase],
) -> None:
    case = case_factory()
    plain = case.record(4)
    ra = plain["candidate"]["ra"]
    above = case.record(5) | {"candidate": plain["candidate"] | {"ra": ra + 360.0}}
    below = case.record(6) | {"candidate": plain["candidate"] | {"ra": ra - 720.0}}

    outcome = case.run([(r["objectId"], case.value(r)) for r in (plain, above, below)])

    assert outcome.dead_letters == []
    by_object = {}
    for message in outcome.output:
        record = decode_alert(message.value).record
        by_object[record["objectId"]] = record
    expected = by_object[plain["objectId"]]["xmatches"]["allwise"]
    for shifted, shift in ((above, 360.0), (below, -720.0)):
        published = by_object[shifted["objectId"]]
        assert published["candidate"]["ra"] == ra + shift  # the alert is published unchanged
        assert published["xmatches"]["allwise"]["AllWISE"] == expected["AllWISE"]
        assert published["xmatches"]["allwise"]["angDist"] == pytest.approx(
            expected["angDist"], abs=1e-6
        )


def _alert_of_size(case: BadInputCase, index: int, size: int) -> bytes:
    """A valid alert of ``size`` bytes: its science cutout padded with random bytes."""
    record = case.record(index)
    base = len(case.value(record))
    cutout = record["cutoutScience"] | {"stampData": os.urandom(0)}
    padding = size - base + len(record["cutoutScience"]["stampData"])
    for _ in range(3):  # the length prefix of the bytes grows with them
        record["cutoutScience"] = cutout | {"stampData": os.urandom(padding)}
        value = case.value(record)
        padding += size - len(value)
    assert len(value) == size
    return value


def test_a_valid_alert_of_1_02_mb_is_published_enriched(
    case_factory: Callable[..., BadInputCase],
) -> None:
    case = case_factory()
    big = _alert_of_size(case, 7, 1_020_000)

    outcome = case.run([case.good(0), ("big", big)])

    assert outcome.dead_letters == []
    published = {decode_alert(m.value).candid: m.value for m in outcome.output}
    output = published[decode_alert(big).candid]
    assert len(output) > 1_020_000
    record = decode_alert(output).record
    assert record["xmatches"]["allwise"]["AllWISE"]
    assert record["cutoutScience"] == decode_alert(big).record["cutoutScience"]


def test_an_output_too_large_for_its_topic_is_dead_lettered_whole(
    case_factory: Callable[..., BadInputCase],
) -> None:
    case = case_factory(output_config={"max.message.bytes": "300000"})
    large = _alert_of_size(case, 8, 299_900)  # fits the input; enriched, not the output

    outcome = case.run([case.good(0), ("large", large), case.good(1)])

    assert len(outcome.output) == 2
    (letter,) = outcome.dead_letters
    assert letter.value == large
    assert "too large to publish" in letter.headers["reason"].decode()
    assert "value.truncated.from" not in letter.headers
    assert group_offsets(case.kafka_bootstrap, case.group_id, case.input_topic) == {0: 3}


def test_a_dead_letter_too_large_for_its_topic_is_cut_and_keeps_reason_and_origin(
    case_factory: Callable[..., BadInputCase],
) -> None:
    small = {"max.message.bytes": "200000"}
    case = case_factory(output_config=small, dead_letter_config=small)
    large = _alert_of_size(case, 9, 600_000)

    outcome = case.run([case.good(0), ("large", large)])

    assert len(outcome.output) == 1
    (letter,) = outcome.dead_letters
    assert letter.value == large[:DEAD_LETTER_CUT_BYTES]
    assert letter.headers["value.truncated.from"] == b"600000"
    assert "too large to publish" in letter.headers["reason"].decode()
    assert letter.headers["origin.offset"] == b"1"
    assert letter.key == b"large"


def test_each_output_schema_is_its_inputs_text_plus_xmatches_docs_included(
    case_factory: Callable[..., BadInputCase],
) -> None:
    """Two writer schemas equal but for a doc string (one Avro fingerprint): each output
    embeds its own input's text, byte for byte, with the xmatches field appended."""
    case = case_factory()
    document = json.loads(case.factory.schema.text)
    texts = [
        json.dumps(document | {"doc": "first writer"}, indent=1).encode(),
        json.dumps(document | {"doc": "second writer"}, separators=(",", ":")).encode(),
    ]
    schemas = [schema_from_text(text) for text in texts]
    assert schemas[0].fingerprint == schemas[1].fingerprint
    records = [case.record(10), case.record(11)]

    outcome = case.run(
        [(r["objectId"], encode_alert(r, s)) for r, s in zip(records, schemas, strict=True)]
    )

    embedded = {
        decode_alert(m.value).object_id: read_container(m.value).schema_text for m in outcome.output
    }
    for record, text in zip(records, texts, strict=True):
        expected = text
        for field in appended_fields():
            expected = with_last_field(expected, field)
        assert embedded[record["objectId"]] == expected
        assert embedded[record["objectId"]].startswith(text[: text.rindex(b"]")].rstrip())


def test_the_runner_refuses_a_live_range_that_does_not_start_at_the_group_offset(
    case_factory: Callable[..., BadInputCase],
) -> None:
    """Launched directly, without the op's early check: the runner itself refuses."""
    case = case_factory()
    produce_values(case.kafka_bootstrap, case.input_topic, [case.good(i) for i in range(4)])
    runner = case.runner()

    with pytest.raises(GroupNotAtRangeStartError, match="skip offsets \\[0, 2\\)"):
        runner.run(OffsetRange(case.input_topic, 0, 2, 4), run_id="ahead")
    assert group_offsets(case.kafka_bootstrap, case.group_id, case.input_topic) == {0: None}
    runner.run(OffsetRange(case.input_topic, 0, 0, 2), run_id="first")
    with pytest.raises(GroupNotAtRangeStartError, match="a second time"):
        runner.run(OffsetRange(case.input_topic, 0, 0, 2), run_id="again")
    runner.run(OffsetRange(case.input_topic, 0, 2, 4), run_id="second")

    assert group_offsets(case.kafka_bootstrap, case.group_id, case.input_topic) == {0: 4}
    output = read_committed(case.kafka_bootstrap, case.output_topic)
    assert len(output) == len({decode_alert(m.value).candid for m in output}) == 4


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_the_runner_fails_when_the_group_offset_cannot_be_read(
    case_factory: Callable[..., BadInputCase],
) -> None:
    """No broker answers: the run fails (a system fault) instead of skipping the check."""
    case = case_factory()
    services = case.services
    config = services.microbatch_config()
    config = replace(
        config,
        settings=config.settings.model_copy(update={"consume_timeout_seconds": 1.0}),
        kafka=KafkaClientConfig(f"127.0.0.1:{_closed_port()}"),
    )
    runner = MicrobatchRunner(config, services.crossmatch_engine, services.database)

    with pytest.raises(MicrobatchError, match="could not read the offset of consumer group"):
        runner.run(OffsetRange(case.input_topic, 0, 0, 2), run_id="blind")


def test_postgres_down_at_the_first_connection_gives_the_pipelines_own_error(
    kafka_bootstrap: str, allwise_index: Path
) -> None:
    port = _closed_port()
    environment = pipeline_environment(
        kafka_bootstrap=kafka_bootstrap,
        database_url=f"postgresql+psycopg://xmatch:secret-pw@127.0.0.1:{port}/alerts",
        input_topic="unused",
        output_topic="unused-out",
        group_id=unique_group(),
        index_dir=allwise_index,
    )
    services = PipelineServices(load_settings(environment))

    with pytest.raises(DatabaseUnavailableError) as failure:
        services.runner()

    message = str(failure.value)
    assert f"cannot connect to PostgreSQL alerts at 127.0.0.1:{port} as xmatch" in message
    assert "check that the server is running" in message
    assert "secret-pw" not in message
    assert "sqlalche.me" not in message  # SQLAlchemy's own wrapper text stays out
