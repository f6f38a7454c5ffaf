"""PostgreSQL: the original's crossmatch tables, the batch writer, the match cache and the
offset-range ledger that keeps two live runs off one partition."""

from xmatch_pipeline.store.errors import (
    LedgerOwnershipError,
    OverlappingRangeError,
    PartitionBusyError,
    SchemaError,
    StoreError,
)
from xmatch_pipeline.store.match_cache import KnownMatch, StoredMatchCache
from xmatch_pipeline.store.match_writer import (
    MatchBatchRows,
    MatchBatchWriteCounts,
    StepRecord,
    TableWriteCount,
    write_match_batch,
)
from xmatch_pipeline.store.range_ledger import (
    LedgerEntry,
    PartitionHold,
    RangeCounts,
    RangeLedger,
)
from xmatch_pipeline.store.schema import ensure_schema

__all__ = [
    "KnownMatch",
    "LedgerEntry",
    "LedgerOwnershipError",
    "MatchBatchRows",
    "MatchBatchWriteCounts",
    "OverlappingRangeError",
    "PartitionBusyError",
    "PartitionHold",
    "RangeCounts",
    "RangeLedger",
    "SchemaError",
    "StepRecord",
    "StoreError",
    "StoredMatchCache",
    "TableWriteCount",
    "ensure_schema",
    "write_match_batch",
]
