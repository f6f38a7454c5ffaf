"""The checks every range's run must pass, decided on plain numbers (Dagster shows them as
asset checks, ``orchestration/range_checks.py``):

- ``offsets_accounted``: every message read comes out once, enriched or dead-lettered
  (without output, a backfill counts the decoded alerts instead of the produced ones);
- ``no_duplicate_candid``: no ``candid`` twice in the range's output (a failure means the
  input itself holds duplicates, which are published as they came);
- ``match_rate_in_bounds``: the share of decoded alerts with a match stays within the
  configured bounds; a sudden drop points at a broken catalog or CDS;
- ``lag_below_threshold``: the partition's lag after the run (freshness).

A check never fails the run: its data are committed already; it flags the range.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

CheckName = Literal[
    "offsets_accounted", "no_duplicate_candid", "match_rate_in_bounds", "lag_below_threshold"
]
CHECK_NAMES: tuple[CheckName, ...] = (
    "offsets_accounted",
    "no_duplicate_candid",
    "match_rate_in_bounds",
    "lag_below_threshold",
)


@dataclass(frozen=True)
class RangeCheckBounds:
    """``XMATCH_CHECK_MIN_MATCH_RATE``, ``…_MAX_MATCH_RATE`` and ``XMATCH_CHECK_MAX_LAG``."""

    min_match_rate: float = 0.0
    max_match_rate: float = 1.0
    max_lag: int = 100_000


@dataclass(frozen=True)
class RangeCounts:
    """What a run did to its range, as the checks need it."""

    messages: int
    decoded: int
    produced: int
    dead_lettered: int
    matched: int
    duplicate_candids: int
    output_produced: bool
    lag_after: int | None

    @property
    def match_rate(self) -> float:
        return self.matched / self.decoded if self.decoded else 0.0


@dataclass(frozen=True)
class RangeCheckOutcome:
    name: CheckName
    passed: bool
    #: ``error`` for a broken guarantee, ``warn`` for a number out of its expected bounds.
    severity: Literal["error", "warn"]
    description: str
    values: dict[str, int | float]


def duplicate_count(candids: Sequence[int]) -> int:
    """How many ``candid`` values occur more than once (each counted once)."""
    return sum(1 for count in Counter(candids).values() if count > 1)


def evaluate_range(counts: RangeCounts, bounds: RangeCheckBounds) -> list[RangeCheckOutcome]:
    """The outcome of each check; the lag check only when the lag is known."""
    out_count = counts.produced if counts.output_produced else counts.decoded
    accounted = out_count + counts.dead_lettered
    what = "produced" if counts.output_produced else "decoded"
    rate = counts.match_rate
    outcomes = [
        RangeCheckOutcome(
            "offsets_accounted",
            accounted == counts.messages,
            "error",
            f"{out_count:,} {what} + {counts.dead_lettered:,} dead-lettered = {accounted:,} "
            f"of {counts.messages:,} messages",
            {"messages": counts.messages, what: out_count, "dead_lettered": counts.dead_lettered},
        ),
        RangeCheckOutcome(
            "no_duplicate_candid",
            counts.duplicate_candids == 0,
            "error",
            f"{counts.duplicate_candids:,} candid values occur more than once in the output",
            {"duplicate_candids": counts.duplicate_candids},
        ),
        RangeCheckOutcome(
            "match_rate_in_bounds",
            counts.decoded == 0 or bounds.min_match_rate <= rate <= bounds.max_match_rate,
            "warn",
            f"match rate {rate:.1%} of {counts.decoded:,} decoded alerts; expected "
            f"{bounds.min_match_rate:.1%} to {bounds.max_match_rate:.1%}",
            {
                "match_rate": round(rate, 4),
                "min_match_rate": bounds.min_match_rate,
                "max_match_rate": bounds.max_match_rate,
            },
        ),
    ]
    if counts.lag_after is not None:
        outcomes.append(
            RangeCheckOutcome(
                "lag_below_threshold",
                counts.lag_after <= bounds.max_lag,
                "warn",
                f"lag after the run {counts.lag_after:,}; threshold {bounds.max_lag:,}",
                {"lag": counts.lag_after, "max_lag": bounds.max_lag},
            )
        )
    return outcomes
