"""The ``xmatch-pipeline`` command: one entry point, a sub-command per concern."""

from __future__ import annotations

import typer

from xmatch_pipeline.cli import (
    alerts,
    catalog,
    cds_server,
    crossmatch,
    demo,
    devstack,
    lsst,
    worker,
)

app = typer.Typer(
    name="xmatch-pipeline",
    help="Crossmatch ZTF alerts with ALLWISE: local services, alert tools, catalogs, engines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(devstack.app, name="devstack")
app.add_typer(alerts.app, name="alerts")
app.add_typer(lsst.app, name="lsst")
app.add_typer(catalog.app, name="catalog")
app.command("crossmatch")(crossmatch.crossmatch_command)
app.command("cds-server")(cds_server.cds_server_command)
app.command("demo")(demo.demo_command)
app.command("worker")(worker.worker_command)


if __name__ == "__main__":
    app()
