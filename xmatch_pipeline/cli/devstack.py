"""``xmatch-pipeline devstack up | down | status``: the local Kafka broker, PostgreSQL and
Redis (Celery's broker)."""

from __future__ import annotations

import shlex
import time

import typer

from xmatch_pipeline.devtools.devstack import (
    DevstackError,
    check_health,
    devstack_settings,
    ensure_devstack_running,
    stop_devstack,
)

app = typer.Typer(
    help="Local Apache Kafka (KRaft), PostgreSQL and Redis for development, tests and the demo.",
    no_args_is_help=True,
)


def _fail(error: DevstackError) -> typer.Exit:
    typer.echo(f"devstack: {error}", err=True)
    return typer.Exit(code=2)


@app.command()
def up() -> None:
    """Start whatever is not running and wait until every service accepts connections."""
    started = time.monotonic()
    try:
        settings = ensure_devstack_running()
    except DevstackError as error:
        raise _fail(error) from None
    typer.echo(
        f"devstack up in {time.monotonic() - started:.1f} s: Kafka on "
        f"{settings.kafka_bootstrap_servers}, PostgreSQL on {settings.postgres_host}:"
        f"{settings.postgres_port}, Redis (Celery's broker) on {settings.celery_broker_url} "
        f"(data and logs in {settings.devstack_dir})",
        err=True,
    )


@app.command()
def down() -> None:
    """Stop the services cleanly; their data stays for the next ``up``."""
    try:
        was_running = stop_devstack()
    except DevstackError as error:
        raise _fail(error) from None
    for service, running in was_running.items():
        typer.echo(f"{service}: {'stopped' if running else 'was not running'}", err=True)


@app.command()
def status(
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Print nothing; exit 0 if every service answers, else 1."
    ),
) -> None:
    """Print the connection settings as KEY=VALUE lines (for ``eval``/``export``); exit 1 if a
    service does not answer."""
    settings = devstack_settings()
    health = check_health(settings)
    if not quiet:
        for key, value in settings.as_environment().items():
            typer.echo(f"{key}={shlex.quote(value)}")
        typer.echo(f"# kafka: {'up' if health.kafka else 'DOWN'}", err=True)
        typer.echo(f"# postgres: {'up' if health.postgres else 'DOWN'}", err=True)
        typer.echo(f"# redis: {'up' if health.redis else 'DOWN'}", err=True)
    raise typer.Exit(code=0 if health.all_up else 1)


if __name__ == "__main__":
    app()
