"""``xmatch-pipeline catalog …``: the registered catalogs; HATS catalogs for the local engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Registered catalogs; HATS catalogs for the local engine.", no_args_is_help=True
)


@app.callback()
def catalog_group() -> None:
    """Registered catalogs, and HATS catalogs for the local engine and cds-server."""


@app.command("list")
def list_command() -> None:
    """The registered catalogs: name, release, VizieR table, default radius, storage."""
    from xmatch_pipeline.match.catalogs import registered_catalogs

    rows = [("name", "release", "vizier table", "radius", "storage", "aliases")]
    rows += [
        (
            definition.name,
            definition.release,
            definition.vizier_table,
            f"{definition.default_radius_arcsec:g}\u2033",
            definition.storage,
            ", ".join(definition.aliases),
        )
        for definition in registered_catalogs()
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@app.command("build")
def build_command(
    inputs: Annotated[
        list[Path], typer.Argument(help="CSV or Parquet files holding the catalog's rows.")
    ],
    *,
    id_col: Annotated[str, typer.Option("--id-col", help="Column with the catalog's ids.")],
    ra_col: Annotated[str, typer.Option("--ra-col", help="Right ascension column, degrees.")],
    dec_col: Annotated[str, typer.Option("--dec-col", help="Declination column, degrees.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="New directory for the HATS catalog.")
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="Catalog name (default: the directory's).")
    ] = None,
    order: Annotated[
        int | None,
        typer.Option("--order", help="HEALPix partition order (default: from the row count)."),
    ] = None,
) -> None:
    """Build a HATS catalog that the local engine, ``cds-server`` and LSDB can read."""
    from xmatch_pipeline.match.local.build import CatalogBuildError, build_catalog_index

    missing = [str(path) for path in inputs if not path.is_file()]
    if missing:
        typer.echo(f"error: input file(s) not found: {', '.join(missing)}", err=True)
        raise typer.Exit(code=2)
    try:
        info = build_catalog_index(
            inputs,
            output,
            id_column=id_col,
            ra_column=ra_col,
            dec_column=dec_col,
            name=name,
            partition_order=order,
        )
    except CatalogBuildError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
    typer.echo(
        f"built catalog {info.name!r} in {info.directory}: {info.row_count} rows, "
        f"{len(info.pixel_rows)} partitions at HEALPix order {info.partition_order}"
    )
