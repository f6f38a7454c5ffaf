"""``xmatch-pipeline crossmatch``: ad hoc crossmatch of a CSV file, as astroquery's XMatch.

The output is shaped like CDS's CSV: ``angDist``, the input's columns (text as read), the
catalog's columns; inputs without a match are absent. Both engines write the same file.
"""

from __future__ import annotations

import csv
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    import pandas as pd

    from xmatch_pipeline.match.catalog_spec import CatalogSpec, Selection


class EngineName(StrEnum):
    cds = "cds"
    local = "local"


class SelectionName(StrEnum):
    best = "best"
    all = "all"


def crossmatch_command(
    input_file: Annotated[
        Path, typer.Argument(metavar="INPUT.csv", help="CSV file with an id and a position.")
    ],
    *,
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV file to write.")],
    engine: Annotated[
        EngineName, typer.Option("--engine", help="cds: the CDS XMatch service; local: an index.")
    ] = EngineName.cds,
    catalog: Annotated[
        str,
        typer.Option(
            "--catalog",
            help="cds: a VizieR table or alias (allwise); local: an index directory.",
        ),
    ] = "allwise",
    radius_arcsec: Annotated[
        float, typer.Option("--radius-arcsec", help="Match radius, arcsec (at most 180).")
    ] = 1.0,
    selection: Annotated[
        SelectionName, typer.Option("--selection", help="best: the nearest; all: every match.")
    ] = SelectionName.best,
    id_col: Annotated[str, typer.Option("--id-col", help="Input column with unique ids.")] = "id",
    ra_col: Annotated[str, typer.Option("--ra-col", help="Input right ascension, deg.")] = "ra",
    dec_col: Annotated[str, typer.Option("--dec-col", help="Input declination, deg.")] = "dec",
    columns: Annotated[
        str | None,
        typer.Option(
            "--columns",
            help="Catalog columns to keep, comma-separated (default: a registered "
            "catalog's columns, see `catalog list`; else every column).",
        ),
    ] = None,
    cds_url: Annotated[
        str | None, typer.Option("--cds-url", help="CDS XMatch sync endpoint (cds engine).")
    ] = None,
    chunk_rows: Annotated[
        int, typer.Option("--chunk-rows", help="Rows per CDS request (at most 50,000).")
    ] = 50_000,
    deadline_seconds: Annotated[
        float, typer.Option("--deadline-seconds", help="Time allowed per CDS chunk, retries in.")
    ] = 900.0,
) -> None:
    """Crossmatch INPUT.csv with a catalog; write CDS-shaped CSV to --output."""
    import pandas as pd

    from xmatch_pipeline.match.catalog_spec import CatalogSpec
    from xmatch_pipeline.match.crossmatch_engine import CrossmatchError

    if not input_file.is_file():
        typer.echo(f"error: input file not found: {input_file}", err=True)
        raise typer.Exit(code=2)
    try:
        table = _read_input(input_file, id_col, ra_col, dec_col)
        positions = pd.DataFrame(
            {
                "id": table[id_col].astype("string"),
                "ra": _coordinates(table, ra_col, input_file),
                "dec": _coordinates(table, dec_col, input_file),
            }
        )
        if engine is EngineName.local:
            matches = _match_locally(positions, Path(catalog), columns, radius_arcsec, selection)
        else:
            spec = CatalogSpec(
                name=catalog,
                columns=_column_list(columns, catalog),
                radius_arcsec=radius_arcsec,
                selection=_selection(selection),
            )
            matches = _match_with_cds(positions, spec, cds_url, chunk_rows, deadline_seconds)
    except (CrossmatchError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
    rows = _write_output(output, table, id_col, matches)
    typer.echo(
        f"{rows} match(es) for {len(table)} input row(s) written to {output} "
        f"({len(table) - matches['id'].nunique()} without a match)"
    )


def _read_input(path: Path, id_col: str, ra_col: str, dec_col: str) -> pd.DataFrame:
    """The input as text, column for column (echoed verbatim), with unique ids."""
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype="string", keep_default_na=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path} as CSV: {error}") from error
    missing = [column for column in (id_col, ra_col, dec_col) if column not in table.columns]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; it has {list(table.columns)}")
    if "angDist" in table.columns:
        raise ValueError(f"{path}: an input column is named angDist; rename it")
    duplicated = table[id_col][table[id_col].duplicated()]
    if not duplicated.empty:
        raise ValueError(
            f"{path}: ids in {id_col!r} must be unique; {duplicated.iloc[0]!r} repeats"
        )
    return table


def _coordinates(table: pd.DataFrame, column: str, path: Path) -> pd.Series:
    try:
        return table[column].astype("float64")
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: column {column!r} is not numeric: {error}") from error


def _column_list(columns: str | None, catalog: str) -> tuple[str, ...]:
    """The columns asked, else a registered catalog's default ones, else every column."""
    from xmatch_pipeline.match.catalogs import find_catalog

    if columns is not None:
        return tuple(column.strip() for column in columns.split(",") if column.strip())
    registered = find_catalog(catalog)
    if registered is None:
        return ()
    return registered.default_columns or registered.column_names


def _selection(selection: SelectionName) -> Selection:
    return "best" if selection is SelectionName.best else "all"


def _match_locally(
    positions: pd.DataFrame,
    directory: Path,
    columns: str | None,
    radius_arcsec: float,
    selection: SelectionName,
) -> pd.DataFrame:
    from xmatch_pipeline.match.catalog_spec import CatalogSpec
    from xmatch_pipeline.match.local.index import LocalCatalogIndex, LocalCrossmatchEngine

    if not directory.is_dir():
        raise ValueError(f"--catalog {directory}: not a directory (the local engine needs one)")
    name = LocalCatalogIndex.open(directory).name
    engine = LocalCrossmatchEngine({name: directory})
    chosen = (
        tuple(column.strip() for column in columns.split(",") if column.strip())
        if columns is not None
        else engine.index(name).columns
    )
    spec = CatalogSpec(name, chosen, radius_arcsec, _selection(selection))
    return engine.crossmatch(positions, spec)


def _match_with_cds(
    positions: pd.DataFrame,
    spec: CatalogSpec,
    cds_url: str | None,
    chunk_rows: int,
    deadline_seconds: float,
) -> pd.DataFrame:
    from xmatch_pipeline.match.cds.client import (
        DEFAULT_CDS_XMATCH_URL,
        CdsClientSettings,
        CdsXmatchClient,
    )

    settings = CdsClientSettings(
        url=cds_url or DEFAULT_CDS_XMATCH_URL,
        chunk_rows=chunk_rows,
        deadline_seconds=deadline_seconds,
    )
    return CdsXmatchClient(settings).crossmatch(positions, spec)


def _write_output(path: Path, table: pd.DataFrame, id_col: str, matches: pd.DataFrame) -> int:
    """CDS's shape: angDist, the input row as read, the catalog columns (renamed ``*_cat``
    where an input column has the name); in input order, nearest first."""
    import numpy as np

    from xmatch_pipeline.devtools.cds_server.protocol import format_value

    input_columns = list(table.columns)
    catalog_columns = [column for column in matches.columns if column not in ("id", "angDist")]
    names = [f"{column}_cat" if column in input_columns else column for column in catalog_columns]
    row_of_id = {identifier: row for row, identifier in enumerate(table[id_col].tolist())}
    input_row_numbers = np.array(
        [row_of_id[identifier] for identifier in matches["id"].tolist()], dtype=np.int64
    )
    distances = matches["angDist"].to_numpy(dtype=np.float64)
    order = np.lexsort((distances, input_row_numbers))
    values = [matches[column].tolist() for column in catalog_columns]
    input_rows = table.to_numpy(dtype=object)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["angDist", *input_columns, *names])
        for position in order:
            writer.writerow(
                [
                    repr(float(distances[position])),
                    *input_rows[input_row_numbers[position]],
                    *(format_value(column[position]) for column in values),
                ]
            )
    return len(order)
