"""Input topic selection: lists, the original's daily topics with a fixed clock, patterns."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from xmatch_pipeline.kafka.client_config import KafkaClientConfig
from xmatch_pipeline.read.kafka_offsets import KafkaOffsetsReader
from xmatch_pipeline.read.topic_selection import (
    daily_topic_names,
    select_topics,
    topics_from_list,
    topics_matching,
)

EVENING = datetime(2024, 1, 31, 22, 59, 59, tzinfo=UTC)
AFTER_CHANGE = datetime(2024, 1, 31, 23, 0, 0, tzinfo=UTC)


def test_comma_separated_list_keeps_order_and_drops_blanks() -> None:
    assert topics_from_list(" ztf_a , ztf_b,,ztf_a, ") == ["ztf_a", "ztf_b"]
    assert topics_from_list("") == []


def test_daily_topics_follow_today_and_yesterday_before_the_change_hour() -> None:
    assert daily_topic_names("ztf_%s_programid1", EVENING) == [
        "ztf_20240130_programid1",
        "ztf_20240131_programid1",
    ]


def test_daily_topics_add_tomorrow_from_the_change_hour_across_a_month_end() -> None:
    assert daily_topic_names("ztf_%s_programid1", AFTER_CHANGE) == [
        "ztf_20240130_programid1",
        "ztf_20240131_programid1",
        "ztf_20240201_programid1",
    ]
    assert daily_topic_names("ztf_%s_programid1", AFTER_CHANGE, change_hour=24) == [
        "ztf_20240130_programid1",
        "ztf_20240131_programid1",
    ]


def test_daily_topics_use_the_utc_date_and_every_format() -> None:
    chile = timezone(timedelta(hours=-3))
    local_evening = datetime(2024, 1, 31, 21, 30, tzinfo=chile)  # 2024-02-01 00:30 UTC
    assert daily_topic_names(
        "ztf_%s_programid1,ztf_%s_programid3", local_evening, previous_days=0
    ) == ["ztf_20240201_programid1", "ztf_20240201_programid3"]


def test_daily_format_errors_are_explained() -> None:
    with pytest.raises(ValueError, match="exactly once"):
        daily_topic_names("ztf_programid1", EVENING)
    with pytest.raises(ValueError, match="naive"):
        daily_topic_names("ztf_%s", datetime(2024, 1, 31, 12))


def test_pattern_matches_whole_names_and_never_internal_topics() -> None:
    existing = ["ztf_20240131_programid1", "ztf_20240131_programid1.dlq", "__consumer_offsets"]
    assert topics_matching(r"ztf_\d{8}_programid1", existing) == ["ztf_20240131_programid1"]
    assert topics_matching(".*", existing) == existing[:2]
    with pytest.raises(ValueError, match="not a regular expression"):
        topics_matching("ztf_[", existing)


def test_select_returns_only_existing_topics() -> None:
    existing = {"ztf_20240131_programid1", "other"}
    assert select_topics(existing, topics=["ztf_20240131_programid1", "gone"]) == [
        "ztf_20240131_programid1"
    ]
    assert select_topics(existing, daily_format="ztf_%s_programid1", now=AFTER_CHANGE) == [
        "ztf_20240131_programid1"
    ]
    assert select_topics(existing, pattern="oth.*") == ["other"]
    with pytest.raises(ValueError, match="exactly one way"):
        select_topics(existing, topics=["other"], pattern="oth.*")


def test_pattern_against_the_real_cluster_topic_list(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic("select-pattern")
    existing = KafkaOffsetsReader(KafkaClientConfig(kafka_bootstrap), "any").list_topics()
    assert select_topics(existing, pattern=r"select-pattern-[0-9a-f]{12}") == [
        name for name in sorted(existing) if name.startswith("select-pattern-")
    ]
    assert topic in select_topics(existing, pattern="select-pattern-.*")
