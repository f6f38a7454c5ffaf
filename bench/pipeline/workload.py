"""The benchmark's data, generated once and cached under ``.devstack/bench-cache/pipeline``.

Alerts fall uniformly in the four ZTF-like fields of ``bench.crossmatch_engines``. The
ALLWISE-like catalog holds a counterpart (moved by ~0.3″) for ``MATCH_SHARE`` of them plus a
background of unrelated sources, so about that share of alerts match, as real ones do
around stars. Alerts are ~68 kB synthetic 3.3 packets; generating them costs ~1.2 ms each,
so they are kept on disk as length-prefixed records and only the missing tail is generated.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.crossmatch_engines import (
    ZTF_FIELD_CENTRES,
    _moved,
    _uniform_in_field,
)
from xmatch_pipeline.match.catalogs.allwise import CDS_COLUMNS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = PROJECT_ROOT / ".devstack" / "bench-cache" / "pipeline"

MAX_ALERTS = 50_000
"""Positions are drawn for this many alerts; every run uses a prefix of them."""
MATCH_SHARE = 0.4
BACKGROUND_SOURCES_PER_FIELD = 250_000  # ~5,300 per deg², a quarter of ALLWISE's density
ALERT_SEED = 7
POSITION_SEED = 20260102
_LENGTH = struct.Struct("<I")


def alert_positions(count: int = MAX_ALERTS) -> list[tuple[float, float]]:
    """(ra, dec) of the first ``count`` alerts, in degrees (the same prefix for any count)."""
    rng = np.random.default_rng(POSITION_SEED)
    per_field = [_uniform_in_field(rng, MAX_ALERTS, centre) for centre in ZTF_FIELD_CENTRES]
    field_of = np.arange(MAX_ALERTS) % len(ZTF_FIELD_CENTRES)
    slot = np.arange(MAX_ALERTS) // len(ZTF_FIELD_CENTRES)
    ra = np.array([per_field[f][0][s] for f, s in zip(field_of, slot, strict=True)])
    dec = np.array([per_field[f][1][s] for f, s in zip(field_of, slot, strict=True)])
    return list(zip(ra[:count].tolist(), dec[:count].tolist(), strict=True))


def _catalog_table() -> pa.Table:
    rng = np.random.default_rng(POSITION_SEED + 1)
    positions = np.array(alert_positions())
    with_counterpart = rng.uniform(size=len(positions)) < MATCH_SHARE
    counterpart_ra, counterpart_dec = _moved(
        rng, positions[with_counterpart, 0], positions[with_counterpart, 1]
    )
    background = [
        _uniform_in_field(rng, BACKGROUND_SOURCES_PER_FIELD, c) for c in ZTF_FIELD_CENTRES
    ]
    ra = np.concatenate([counterpart_ra, *(field[0] for field in background)])
    dec = np.concatenate([counterpart_dec, *(field[1] for field in background)])
    rows = ra.size
    columns: dict[str, pa.Array] = {
        "AllWISE": pa.array([f"J{index:010d}+BENCH" for index in range(rows)]),
        "RAJ2000": pa.array(ra),
        "DEJ2000": pa.array(dec),
    }
    for name in CDS_COLUMNS[3:]:
        is_error = name.startswith("e_")
        values = rng.normal(0.05, 0.02, rows) if is_error else rng.normal(15.0, 1.5, rows)
        missing = rng.uniform(size=rows) < (
            0.3 if name.endswith(("Jmag", "Hmag", "Kmag")) else 0.05
        )
        columns[name] = pa.array(values, mask=missing)
    return pa.table(columns)


def catalog_index(cache_dir: Path = CACHE_DIR) -> Path:
    """The ALLWISE-like HATS catalog (built once, ~1 M rows); returns its directory."""
    from xmatch_pipeline.match.local.build import build_catalog_index

    index_dir = cache_dir / "allwise_hats"
    if (index_dir / "properties").exists():
        return index_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    source = cache_dir / "allwise_like.parquet"
    pq.write_table(_catalog_table(), source)
    started = time.perf_counter()
    build_catalog_index(
        [source], index_dir, id_column="AllWISE", ra_column="RAJ2000", dec_column="DEJ2000",
        name="allwise",
    )  # fmt: skip
    print(f"catalog index built in {time.perf_counter() - started:.0f} s", flush=True)
    return index_dir


class AlertCache:
    """Synthetic alert packets on disk: ``alerts.bin`` (length-prefixed) and a count file."""

    def __init__(self, cache_dir: Path = CACHE_DIR) -> None:
        self.data_path = cache_dir / f"alerts-seed{ALERT_SEED}.bin"
        self.count_path = cache_dir / f"alerts-seed{ALERT_SEED}.count"

    def cached(self) -> int:
        return int(self.count_path.read_text()) if self.count_path.exists() else 0

    def ensure(self, count: int) -> None:
        """Generate whatever of the first ``count`` alerts is not on disk yet."""
        from xmatch_pipeline.devtools.alert_tools.synthetic import generate_alert_bytes

        have = self.cached()
        if have >= count:
            return
        if count > MAX_ALERTS:
            raise ValueError(f"at most {MAX_ALERTS} distinct alerts (asked for {count})")
        self.data_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        print(f"generating alerts {have}..{count - 1} into {self.data_path}", flush=True)
        with self.data_path.open("r+b" if have else "wb") as target:
            target.seek(self._offset_after(have) if have else 0)
            target.truncate()
            positions = alert_positions()
            for value in generate_alert_bytes(
                count - have, seed=ALERT_SEED, positions=positions, start=have
            ):
                target.write(_LENGTH.pack(len(value)))
                target.write(value)
        self.count_path.write_text(str(count))
        print(f"generated in {time.perf_counter() - started:.0f} s", flush=True)

    def _offset_after(self, count: int) -> int:
        offset = 0
        with self.data_path.open("rb") as source:
            for _ in range(count):
                source.seek(offset)
                (length,) = _LENGTH.unpack(source.read(_LENGTH.size))
                offset += _LENGTH.size + length
        return offset

    def read(self, count: int) -> Iterator[bytes]:
        """The first ``count`` alerts, streamed from disk."""
        self.ensure(count)
        with self.data_path.open("rb") as source:
            for _ in range(count):
                (length,) = _LENGTH.unpack(source.read(_LENGTH.size))
                yield source.read(length)
