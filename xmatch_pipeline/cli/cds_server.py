"""``xmatch-pipeline cds-server``: CDS XMatch's protocol over local indexes, offline."""

from __future__ import annotations

import signal
from typing import Annotated

import typer


def cds_server_command(
    catalog: Annotated[
        list[str],
        typer.Option(
            "--catalog",
            help="A local index to serve: DIR (served under the index's name) or NAME=DIR. "
            "Repeat for several. `allwise` also answers `vizier:II/328/allwise`.",
        ),
    ],
    *,
    port: Annotated[int, typer.Option("--port", help="TCP port (0: any free port).")] = 8123,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    fault: Annotated[
        list[str] | None,
        typer.Option(
            "--fault",
            help="Fault to inject first, KIND[:TIMES[:SECONDS]] (TIMES `*`: for ever), e.g. "
            "`500:2`, `delay:1:3`, `slow_body:1:0.1`. Kinds: delay, 500, 503, 504, html200, "
            "403, 400, too_many_jobs, truncated, cut_connection, drop, slow_body, far_row, "
            "unknown_id, duplicate_row. Change at run time with POST /_faults.",
        ),
    ] = None,
) -> None:
    """Serve local catalog indexes over CDS XMatch's sync protocol (``/xmatch/api/v1/sync``)."""
    from xmatch_pipeline.devtools.cds_server import (
        CdsXmatchServer,
        Fault,
        ServedCatalogs,
        parse_catalog_argument,
    )
    from xmatch_pipeline.match.local.hats_catalog import HatsFormatError

    try:
        faults = [Fault.from_text(text) for text in fault or []]
        catalogs = ServedCatalogs([parse_catalog_argument(text) for text in catalog])
    except (ValueError, HatsFormatError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error
    try:
        server = CdsXmatchServer(catalogs, host=host, port=port, faults=faults)
    except OSError as error:
        typer.echo(f"error: cannot listen on {host}:{port}: {error}", err=True)
        raise typer.Exit(code=1) from error
    names = ", ".join(served.name for served in catalogs.catalogs)
    typer.echo(f"serving {names} at {server.url} (faults: {server.base_url}/_faults)")
    # Ctrl-C (and SIGTERM) stop it even where SIGINT was ignored on the way in: a background
    # job of a script inherits SIGINT ignored, and Python then installs no handler for it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.stop()
