"""``xmatch-pipeline worker``: a long-lived run worker for this code location (Celery)."""

from __future__ import annotations

from typing import Annotated

import typer


def worker_command(
    *,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Runs at once (pool processes).")
    ] = 2,
    queues: Annotated[
        str,
        typer.Option(
            "--queues",
            "-Q",
            help="Comma-separated queues to take runs from (a run's dagster-celery/queue tag "
            "picks one; untagged runs go to 'dagster').",
        ),
    ] = "dagster",
    max_runs_per_child: Annotated[
        int,
        typer.Option(min=0, help="Replace a pool process after this many runs (0: never)."),
    ] = 200,
    max_memory_per_child_mb: Annotated[
        int,
        typer.Option(
            min=0, help="Replace a pool process after a run that left it above this RSS (0: never)."
        ),
    ] = 2048,
    name: Annotated[
        str | None,
        typer.Option("--name", "-n", help="Celery node name (default: unique per process)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Take runs from the Celery broker and execute them in warm pool processes.

    Needs DAGSTER_HOME (the project's dagster.yaml: broker, result backend, run storage) and
    the pipeline's settings in the environment, as the daemon has them. SIGTERM finishes the
    runs in progress and stops (SIGQUIT stops at once; the sensor then retries the abandoned
    range).
    """
    from xmatch_pipeline.orchestration.celery_worker import (
        WorkerOptions,
        WorkerSetupError,
        run_worker,
    )

    options = WorkerOptions(
        concurrency=concurrency,
        queues=[queue.strip() for queue in queues.split(",") if queue.strip()],
        max_runs_per_child=max_runs_per_child,
        max_memory_per_child_mb=max_memory_per_child_mb,
        node_name=name,
        log_level=log_level,
    )
    try:
        run_worker(options)
    except WorkerSetupError as error:
        typer.echo(f"worker: {error}", err=True)
        raise typer.Exit(code=2) from None
