"""What one run did, stage by stage: the run's metadata in Dagster and the original's metrics
message are both made from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.store.match_writer import MatchBatchWriteCounts

RunMode = Literal["live", "backfill"]


@dataclass
class StageSeconds:
    """Wall time per stage, for the run's metadata (where did the time go)."""

    consume: float = 0.0
    decode: float = 0.0
    crossmatch: float = 0.0
    database: float = 0.0
    produce: float = 0.0
    commit: float = 0.0


@dataclass
class MicrobatchReport:
    """What one run did; becomes asset metadata and the original's metrics message."""

    offset_range: OffsetRange
    mode: RunMode
    run_id: str
    started_at: datetime
    finished_at: datetime | None = None
    messages_in: int = 0
    bytes_in: int = 0
    alerts_decoded: int = 0
    alerts_matched: int = 0
    dead_lettered: int = 0
    produced: int = 0
    bytes_out: int = 0
    sent_to_engine: int = 0
    served_from_cache: int = 0
    candids: list[int] = field(default_factory=list)
    object_ids: list[str] = field(default_factory=list)
    seconds: StageSeconds = field(default_factory=StageSeconds)
    database_counts: MatchBatchWriteCounts | None = None
    output_produced: bool = True
    offsets_committed: bool = False

    @property
    def elapsed_seconds(self) -> float:
        end = self.finished_at or datetime.now(UTC)
        return (end - self.started_at).total_seconds()

    @property
    def match_rate(self) -> float:
        return self.alerts_matched / self.alerts_decoded if self.alerts_decoded else 0.0

    @property
    def alerts_per_second(self) -> float:
        elapsed = self.elapsed_seconds
        return self.messages_in / elapsed if elapsed > 0 else 0.0
