"""Which input topics to follow: a list, the original's daily topics, or a pattern.

ZTF writes one topic per night and program (``ztf_20200101_programid1``). The original
step (ALeRCE's APF ``DailyTopicStrategy``, ``change_hour=23`` in its settings) named the
topic from the UTC date and, from the change hour on, added the next day's topic so the
new night is picked up on time, while the day before stayed followed until its lag is
drained. :func:`daily_topic_names` keeps those semantics as a pure function of the clock;
:func:`select_topics` then keeps only topics that exist on the cluster.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

DATE_FORMAT = "%Y%m%d"
DEFAULT_CHANGE_HOUR = 23
DEFAULT_PREVIOUS_DAYS = 1


def topics_from_list(text: str) -> list[str]:
    """Topics of a comma-separated list (``CONSUMER_TOPICS``), blanks dropped, order kept."""
    topics: list[str] = []
    for name in (part.strip() for part in text.split(",")):
        if name and name not in topics:
            topics.append(name)
    return topics


def daily_topic_names(
    topic_formats: str | Sequence[str],
    now: datetime,
    *,
    change_hour: int = DEFAULT_CHANGE_HOUR,
    previous_days: int = DEFAULT_PREVIOUS_DAYS,
    date_format: str = DATE_FORMAT,
) -> list[str]:
    """Daily topic names to follow at ``now``: oldest day first, formats in given order.

    ``topic_formats`` is one format with ``%s`` for the date, or a comma-separated list
    (``TOPIC_STRATEGY_FORMAT``). The days are today (UTC) and the ``previous_days`` before
    it, plus tomorrow once the UTC hour is ``change_hour`` or later.
    """
    formats = (
        topics_from_list(topic_formats) if isinstance(topic_formats, str) else list(topic_formats)
    )
    for topic_format in formats:
        if topic_format.count("%s") != 1:
            raise ValueError(
                f"daily topic format {topic_format!r} must contain '%s' exactly once, "
                "e.g. ztf_%s_programid1"
            )
    if not 0 <= change_hour <= 24:
        raise ValueError(f"change hour must be within 0..24 (UTC), got {change_hour}")
    if previous_days < 0:
        raise ValueError(f"previous days must be >= 0, got {previous_days}")
    if now.tzinfo is None:
        raise ValueError("daily topics need an aware datetime (UTC), got a naive one")
    today = now.astimezone(UTC)
    days = [today - timedelta(days=back) for back in range(previous_days, -1, -1)]
    if today.hour >= change_hour:
        days.append(today + timedelta(days=1))
    return [
        topic_format.replace("%s", day.strftime(date_format))
        for day in days
        for topic_format in formats
    ]


def topics_matching(pattern: str, existing_topics: Iterable[str]) -> list[str]:
    """Existing topics the whole of whose name matches the regular expression, sorted.

    Internal topics (``__consumer_offsets``, ``__transaction_state``) never match.
    """
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise ValueError(
            f"topic pattern {pattern!r} is not a regular expression: {error}"
        ) from None
    return sorted(
        topic
        for topic in set(existing_topics)
        if not topic.startswith("__") and compiled.fullmatch(topic)
    )


def select_topics(
    existing_topics: Iterable[str],
    *,
    topics: Sequence[str] = (),
    daily_format: str | None = None,
    pattern: str | None = None,
    now: datetime | None = None,
    change_hour: int = DEFAULT_CHANGE_HOUR,
    previous_days: int = DEFAULT_PREVIOUS_DAYS,
) -> list[str]:
    """The input topics that exist now, from exactly one of the three ways to name them."""
    chosen = sum([bool(topics), daily_format is not None, pattern is not None])
    if chosen != 1:
        raise ValueError(
            "name the input topics in exactly one way: a list, a daily format or a pattern"
        )
    existing = set(existing_topics)
    if pattern is not None:
        return topics_matching(pattern, existing)
    if daily_format is not None:
        wanted = daily_topic_names(
            daily_format,
            now or datetime.now(UTC),
            change_hour=change_hour,
            previous_days=previous_days,
        )
    else:
        wanted = list(topics)
    return [topic for topic in wanted if topic in existing]
