"""The batch writer and the match cache on the real PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, event, text

from xmatch_pipeline.match.catalogs import allwise, gaia_dr3
from xmatch_pipeline.store.match_cache import StoredMatchCache
from xmatch_pipeline.store.match_writer import (
    MatchBatchRows,
    StepRecord,
    TableWriteCount,
    write_match_batch,
)

STEP = StepRecord(
    step_id="xmatch-1.0",
    name="xmatch",
    version="1.0",
    date=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    comments="crossmatch with ALLWISE",
)

# Two real ALLWISE sources (from ../shared/data/allwise's CDS answer), RA precise to 1e-8.
SOURCE_A: dict[str, object] = {
    "oid_catalog": "J124131.46+260233.6",
    "ra": 190.38110890000002,
    "dec": 26.0426682,
    "w1mpro": 10.698,
    "w2mpro": 10.444,
    "w3mpro": 8.512,
    "w4mpro": 6.544,
    "w1sigmpro": 0.023,
    "w2sigmpro": 0.021,
    "w3sigmpro": 0.023,
    "w4sigmpro": 0.059000000000000004,
    "j_m_2mass": 13.107999999999999,
    "h_m_2mass": 12.557,
    "k_m_2mass": 12.079,
    "j_msig_2mass": 0.085,
    "h_msig_2mass": 0.098,
    "k_msig_2mass": 0.076,
}
SOURCE_B: dict[str, object] = {
    **SOURCE_A,
    "oid_catalog": "J224840.67+311401.1",
    "ra": 342.16949390,
    "dec": 31.2336389,
    "w4mpro": None,
    "w4sigmpro": pd.NA,
    "j_m_2mass": float("nan"),
}


ALLWISE_RELEASE = allwise.CATALOG.release


def _xmatch(
    oid: str, source: dict[str, object], dist: float, release: str | None = ALLWISE_RELEASE
) -> dict[str, object]:
    return {
        "oid": oid,
        "catid": "allwise",
        "oid_catalog": source["oid_catalog"],
        "dist": dist,
        "release": release,
        "engine": "cds",
        "radius_arcsec": 1.0,
    }


def _batch(
    object_ids: list[str],
    xmatch_rows: list[dict[str, object]],
    allwise_rows: list[dict[str, object]] | None = None,
) -> MatchBatchRows:
    return MatchBatchRows(
        object_ids=object_ids,
        catalog_rows={"allwise": [SOURCE_A, SOURCE_B] if allwise_rows is None else allwise_rows},
        xmatch_rows=xmatch_rows,
        step=STEP,
    )


def _contents(database: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """The tables as the original's readers see them: its own columns (ZTF's rows only)."""
    queries = {
        "object": "SELECT oid FROM object WHERE sid = 'ztf' ORDER BY oid",
        "allwise": "SELECT * FROM allwise ORDER BY oid_catalog",
        "xmatch": "SELECT oid, catid, oid_catalog, dist FROM xmatch WHERE sid = 'ztf' "
        "ORDER BY oid, catid",
        "step": "SELECT * FROM step ORDER BY step_id",
    }
    with database.connect() as connection:
        return {
            table: [tuple(row) for row in connection.execute(text(statement))]
            for table, statement in queries.items()
        }


@pytest.fixture
def database(schema_database: Engine) -> Engine:
    with schema_database.begin() as connection:
        connection.execute(text("TRUNCATE object, allwise, xmatch, step CASCADE"))
    return schema_database


def test_writing_the_same_batch_twice_changes_nothing(database: Engine):
    batch = _batch(
        ["ZTF20aaelulu", "ZTF18abcdefg", "ZTF19nomatch"],
        [_xmatch("ZTF20aaelulu", SOURCE_B, 0.046584), _xmatch("ZTF18abcdefg", SOURCE_A, 0.5)],
    )
    with database.begin() as connection:
        first = write_match_batch(connection, batch)
    contents = _contents(database)
    with database.begin() as connection:
        second = write_match_batch(connection, batch)

    assert first.objects == TableWriteCount(inserted=3)
    assert first.catalogs["allwise"] == TableWriteCount(inserted=2)
    assert first.xmatch == TableWriteCount(inserted=2)
    assert first.step == TableWriteCount(inserted=1)
    nothing = TableWriteCount()
    assert (second.objects, second.catalogs["allwise"], second.xmatch, second.step) == (
        nothing,
    ) * 4
    assert _contents(database) == contents
    assert [row[0] for row in contents["object"]] == [
        "ZTF18abcdefg",
        "ZTF19nomatch",
        "ZTF20aaelulu",
    ]


def test_doubles_round_trip_exactly_and_missing_values_stay_null(database: Engine):
    with database.begin() as connection:
        write_match_batch(
            connection, _batch(["ZTF20aaelulu"], [_xmatch("ZTF20aaelulu", SOURCE_B, 0.046584)])
        )
    with database.connect() as connection:
        row = (
            connection.execute(
                text("SELECT * FROM allwise WHERE oid_catalog = :key"),
                {"key": SOURCE_B["oid_catalog"]},
            )
            .one()
            ._mapping
        )
        dist = connection.execute(text("SELECT dist FROM xmatch")).scalar_one()
    assert row["ra"] == 342.16949390
    assert repr(row["ra"]) == "342.1694939"
    assert row["dec"] == 31.2336389
    assert row["w4mpro"] is None
    assert row["w4sigmpro"] is None  # pd.NA
    assert row["j_m_2mass"] is None  # NaN is not a value: NULL, never NaN
    assert row["w1mpro"] == 10.698
    assert dist == 0.046584


def test_two_alerts_of_one_object_keep_the_last_match_by_offset(database: Engine):
    """xmatch has one row per object: the later alert's match wins, deterministically."""
    batch = _batch(
        ["ZTF20aaelulu", "ZTF20aaelulu"],
        [_xmatch("ZTF20aaelulu", SOURCE_A, 0.2), _xmatch("ZTF20aaelulu", SOURCE_B, 0.7)],
        allwise_rows=[SOURCE_A, SOURCE_B, SOURCE_A],
    )
    with database.begin() as connection:
        counts = write_match_batch(connection, batch)
    assert counts.xmatch == TableWriteCount(inserted=1)
    assert counts.catalogs["allwise"] == TableWriteCount(inserted=2)
    assert _contents(database)["xmatch"] == [
        ("ZTF20aaelulu", "allwise", SOURCE_B["oid_catalog"], 0.7)
    ]

    # A later batch with another match replaces the stored one and says so.
    later = _batch(["ZTF20aaelulu"], [_xmatch("ZTF20aaelulu", SOURCE_A, 0.3)])
    with database.begin() as connection:
        counts = write_match_batch(connection, later)
    assert counts.xmatch == TableWriteCount(updated=1)
    assert _contents(database)["xmatch"] == [
        ("ZTF20aaelulu", "allwise", SOURCE_A["oid_catalog"], 0.3)
    ]


def test_nearest_policy_is_independent_of_batch_order(database: Engine):
    near = _batch(["ZTF20aaelulu"], [_xmatch("ZTF20aaelulu", SOURCE_A, 0.2)])
    far = _batch(["ZTF20aaelulu"], [_xmatch("ZTF20aaelulu", SOURCE_B, 0.7)])
    results = []
    for order in ((near, far), (far, near)):
        with database.begin() as connection:
            connection.execute(text("TRUNCATE object, allwise, xmatch, step CASCADE"))
        for batch in order:
            with database.begin() as connection:
                write_match_batch(connection, batch, keep="nearest")
        results.append(_contents(database)["xmatch"])
    assert results[0] == results[1] == [("ZTF20aaelulu", "allwise", SOURCE_A["oid_catalog"], 0.2)]


def _write_then_crash(database: Engine, batch: MatchBatchRows) -> None:
    with database.begin() as connection:
        write_match_batch(connection, batch)
        raise RuntimeError("crash after the write, before the commit")


def test_a_rolled_back_transaction_leaves_nothing(database: Engine):
    batch = _batch(["ZTF20aaelulu"], [_xmatch("ZTF20aaelulu", SOURCE_B, 0.04)])
    with pytest.raises(RuntimeError, match="crash after the write"):
        _write_then_crash(database, batch)
    assert _contents(database) == {"object": [], "allwise": [], "xmatch": [], "step": []}


def test_step_date_is_kept_when_the_step_is_unchanged(database: Engine):
    with database.begin() as connection:
        write_match_batch(connection, _batch([], [], []))
    restarted = StepRecord(STEP.step_id, STEP.name, STEP.version, datetime.now(UTC), STEP.comments)
    upgraded = StepRecord(STEP.step_id, STEP.name, "1.1", datetime.now(UTC), STEP.comments)
    with database.begin() as connection:
        unchanged = write_match_batch(connection, MatchBatchRows([], {}, [], restarted))
        assert unchanged.step == TableWriteCount()
        changed = write_match_batch(connection, MatchBatchRows([], {}, [], upgraded))
        assert changed.step == TableWriteCount(updated=1)
    assert _contents(database)["step"] == [
        (STEP.step_id, STEP.name, "1.1", STEP.comments, upgraded.date)
    ]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (_batch([], [], [{**SOURCE_A, "W1mag": 10.0}]), r"unknown column\(s\) \['W1mag'\]"),
        (_batch([], [], [{**SOURCE_A, "ra": np.float32(342.1695)}]), "lost precision"),
        (_batch([], [], [{**SOURCE_A, "oid_catalog": None}]), "oid_catalog must be"),
        (_batch([], [_xmatch("ZTF20aaelulu", SOURCE_A, None)]), "dist must be"),  # type: ignore[arg-type]
        (
            _batch(
                [],
                [
                    {
                        "oid": 1234567890123456789,
                        "catid": "allwise",
                        "oid_catalog": "J1",
                        "dist": 0.1,
                    }
                ],
            ),
            "oid must be a non-empty string",
        ),
    ],
)
def test_bad_rows_are_refused_before_writing(database: Engine, rows: MatchBatchRows, message: str):
    with pytest.raises(ValueError, match=message), database.begin() as connection:
        write_match_batch(connection, rows)


def test_writer_refuses_to_autocommit(database: Engine):
    with database.connect() as connection, pytest.raises(ValueError, match="open transaction"):
        write_match_batch(connection, _batch([], []))


def test_match_cache_returns_what_was_written(database: Engine):
    batch = _batch(
        ["ZTF20aaelulu", "ZTF18abcdefg", "ZTF19nomatch"],
        [_xmatch("ZTF20aaelulu", SOURCE_B, 0.046584), _xmatch("ZTF18abcdefg", SOURCE_A, 0.5)],
    )
    with database.begin() as connection:
        write_match_batch(connection, batch)

    known = StoredMatchCache(database).known_matches(
        ["ZTF20aaelulu", "ZTF19nomatch", "ZTF17unknown", "ZTF18abcdefg"], allwise.CATALOG
    )

    assert set(known) == {"ZTF20aaelulu", "ZTF18abcdefg"}
    match = known["ZTF20aaelulu"]
    assert match.dist == 0.046584
    assert match.source["oid_catalog"] == SOURCE_B["oid_catalog"]
    assert match.source["ra"] == 342.16949390
    assert match.source["w4mpro"] is None
    assert match.source["j_m_2mass"] is None
    assert known["ZTF18abcdefg"].source == SOURCE_A
    assert StoredMatchCache(database).known_matches([], allwise.CATALOG) == {}


def test_large_batch_is_written_in_bulk_statements(database: Engine):
    """Thousands of rows go in a few multi-row statements, not one round trip per row."""
    count = 2500
    object_ids = [f"ZTF20bulk{index:05d}" for index in range(count)]
    sources = [{**SOURCE_A, "oid_catalog": f"J{index:05d}"} for index in range(count)]
    matches = [_xmatch(oid, source, 0.1) for oid, source in zip(object_ids, sources, strict=True)]
    statements: list[str] = []

    def count_statement(*arguments: object) -> None:
        statements.append(str(arguments[2]))  # (connection, cursor, statement, ...)

    event.listen(database, "before_cursor_execute", count_statement)
    try:
        with database.begin() as connection:
            counts = write_match_batch(connection, _batch(object_ids, matches, sources))
    finally:
        event.remove(database, "before_cursor_execute", count_statement)

    assert (
        counts.objects.inserted
        == counts.catalogs["allwise"].inserted
        == counts.xmatch.inserted
        == count
    )
    inserts = [statement for statement in statements if statement.lstrip().startswith("INSERT")]
    assert len(inserts) < 50, f"{len(inserts)} INSERT statements for {count} rows per table"


def test_a_ztf_object_and_an_lsst_object_of_the_same_id_never_collide(database: Engine):
    """The survey (sid) is part of the keys: one oid text, two objects, two matches."""
    with database.begin() as connection:
        connection.execute(text("TRUNCATE object, allwise, xmatch, step CASCADE"))
    oid = "281323062375219201"
    ztf = _batch([oid], [_xmatch(oid, SOURCE_A, 0.2)])
    lsst = replace(_batch([oid], [_xmatch(oid, SOURCE_B, 0.7)]), survey="lsst")
    for batch in (ztf, lsst, lsst):  # the replay changes nothing
        with database.begin() as connection:
            counts = write_match_batch(connection, batch, keep="nearest")
    assert counts.objects == TableWriteCount()
    assert counts.xmatch == TableWriteCount()
    with database.connect() as connection:
        objects = connection.execute(text("SELECT oid, sid FROM object ORDER BY sid")).all()
        matches = connection.execute(
            text("SELECT sid, oid, oid_catalog, dist FROM xmatch ORDER BY sid")
        ).all()
    assert [tuple(row) for row in objects] == [(oid, "lsst"), (oid, "ztf")]
    assert [tuple(row) for row in matches] == [
        ("lsst", oid, SOURCE_B["oid_catalog"], 0.7),
        ("ztf", oid, SOURCE_A["oid_catalog"], 0.2),
    ]


NEW_RELEASE = "AllWISE (reprocessed)"


def _stored_xmatch(database: Engine) -> list[tuple[Any, ...]]:
    with database.connect() as connection:
        return [
            tuple(row)
            for row in connection.execute(
                text("SELECT oid, oid_catalog, dist, release FROM xmatch ORDER BY oid")
            )
        ]


def test_nearest_wins_within_a_release_and_a_new_release_rewrites(database: Engine):
    oid = "ZTF20aaelulu"
    with database.begin() as connection:
        write_match_batch(connection, _batch([oid], [_xmatch(oid, SOURCE_A, 0.2)]), keep="nearest")
    # The same release, farther: the nearest stays.
    with database.begin() as connection:
        write_match_batch(connection, _batch([oid], [_xmatch(oid, SOURCE_B, 0.6)]), keep="nearest")
    assert _stored_xmatch(database) == [(oid, SOURCE_A["oid_catalog"], 0.2, ALLWISE_RELEASE)]
    # A backfill under a new release rewrites the row, even with a farther match ...
    new = _xmatch(oid, SOURCE_B, 0.6, NEW_RELEASE)
    with database.begin() as connection:
        counts = write_match_batch(connection, _batch([oid], [new]), keep="nearest")
    assert counts.xmatch == TableWriteCount(updated=1)
    assert _stored_xmatch(database) == [(oid, SOURCE_B["oid_catalog"], 0.6, NEW_RELEASE)]
    # ... and the cache serves only the configured release.
    cache = StoredMatchCache(database)
    assert cache.known_matches([oid], allwise.CATALOG) == {}
    renewed = replace(allwise.CATALOG, release=NEW_RELEASE)
    assert cache.known_matches([oid], renewed)[oid].provenance.release == NEW_RELEASE


def test_gaia_rows_keep_their_19_digit_ids_exact(database: Engine):
    source_id = 6_917_528_997_577_384_320  # near the top of Gaia's range, above 2**53
    row: dict[str, object] = {
        "source_id": np.int64(source_id),
        "ra": 342.16949390,
        "dec": 31.2336389,
        "parallax": None,
        "parallax_error": None,
        "pmra": 1.5,
        "pmdec": -2.5,
        "phot_g_mean_mag": 17.25,
        "phot_bp_mean_mag": None,
        "phot_rp_mean_mag": None,
        "ruwe": 1.01,
    }
    link = {
        "oid": "ZTF20gaia",
        "catid": "gaia_dr3",
        "oid_catalog": str(source_id),
        "dist": 0.1,
        "release": gaia_dr3.CATALOG.release,
        "engine": "local",
        "index_build": "abc",
        "radius_arcsec": 1.0,
    }
    # An ALLWISE link (a text id) beside it: the Gaia lookup must not try it as a number.
    allwise_link = _xmatch("ZTF20gaia", SOURCE_A, 0.3)
    batch = MatchBatchRows(
        ["ZTF20gaia"], {"gaia_dr3": [row], "allwise": [SOURCE_A]}, [link, allwise_link], STEP
    )
    with database.begin() as connection:
        connection.execute(text("TRUNCATE gaia_dr3"))
        write_match_batch(connection, batch)
    with database.connect() as connection:
        stored = connection.execute(text("SELECT source_id FROM gaia_dr3")).scalar_one()
    assert stored == source_id
    known = StoredMatchCache(database).known_matches(["ZTF20gaia"], gaia_dr3.CATALOG)
    assert known["ZTF20gaia"].source["source_id"] == source_id
    assert known["ZTF20gaia"].provenance.index_build == "abc"
    with pytest.raises(ValueError, match="source_id must be an integer"), database.begin() as c:
        write_match_batch(
            c, replace(batch, catalog_rows={"gaia_dr3": [row | {"source_id": 6.9e18}]})
        )
