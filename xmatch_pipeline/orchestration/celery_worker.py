"""The long-lived run worker: a Celery worker that executes this code location's runs.

The app is the instance's own run launcher's (``DAGSTER_HOME``'s dagster.yaml: broker,
result backend and Celery settings in one place). Its run tasks carry dagster-celery's names
and arguments and execute the run inside the pool process as dagster-celery's do
(``_execute_run_command_body``), with one difference: each pool process keeps one Dagster
instance for all its runs, where dagster-celery opens a new one (storage engines, config)
per run. The main process imports the code location and Dagster's storage once before the
prefork pool forks, so every pool process, including one that replaces a recycled one,
starts warm: a run pays no imports.

Each pool process logs the runs it takes and how they end. SIGTERM is Celery's warm
shutdown: the worker takes no new run and finishes the ones it runs. A worker killed anyway
leaves its run to run monitoring, which fails it (run_launcher.py), and the sensor retries
the range.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dagster import DagsterInstance
from dagster._cli.api import _execute_run_command_body, _resume_run_command_body
from dagster._grpc.types import ExecuteRunArgs, ResumeRunArgs
from dagster._serdes import unpack_value
from dagster_celery.config import TASK_EXECUTE_JOB_NAME, TASK_RESUME_JOB_NAME
from dagster_celery.launcher import CeleryRunLauncher

from xmatch_pipeline.orchestration import run_tags

logger = logging.getLogger("xmatch_pipeline.worker")


class WorkerSetupError(RuntimeError):
    """The worker cannot start: the message says what to fix."""


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int
    queues: Sequence[str]
    max_runs_per_child: int
    max_memory_per_child_mb: int
    node_name: str | None = None
    log_level: str = "INFO"


def default_node_name() -> str:
    """Unique per process, so that run monitoring's question "do you still hold this run?"
    reaches this worker only, even with several workers on one host."""
    return f"xmatch-{os.getpid()}@{socket.gethostname()}"


def _launcher_app() -> Any:
    """The Celery app of the instance's run launcher."""
    if not os.environ.get("DAGSTER_HOME"):
        raise WorkerSetupError(
            "DAGSTER_HOME is not set: point it at the folder holding this project's dagster.yaml "
            "(the worker takes its broker and result backend from its run_launcher)."
        )
    instance = DagsterInstance.get()
    try:
        launcher = instance.run_launcher
        if not isinstance(launcher, CeleryRunLauncher):
            raise WorkerSetupError(
                f"the run launcher of {os.environ['DAGSTER_HOME']}/dagster.yaml is "
                f"{type(launcher).__name__}, not a CeleryRunLauncher: runs would never reach "
                "this worker; use the project's dagster.yaml."
            )
        return launcher.celery
    finally:
        instance.dispose()


_process_instance: DagsterInstance | None = None


def process_instance() -> DagsterInstance:
    """This pool process's Dagster instance, made on its first run (after the fork: no
    connection is ever shared between processes) and kept for the next ones."""
    global _process_instance  # noqa: PLW0603  (one per process by design)
    if _process_instance is None:
        _process_instance = DagsterInstance.get()
    return _process_instance


def warm_pool_process(**_: Any) -> None:
    """Open the pool process's Dagster instance and its storage connection as the process
    starts, not in its first run (~1 s on a loaded host, on that run's queued → started)."""
    try:
        process_instance().get_run_by_id("00000000-0000-0000-0000-000000000000")
    except Exception as error:  # the first run then connects, or says why not
        logger.warning("pool process %d could not open Dagster's storage: %s", os.getpid(), error)


def _ignore_event(_event: Any) -> None:
    """The run's events go to the instance's event log; nothing to stream back."""


def register_run_tasks(app: Any) -> None:
    """dagster-celery's run tasks (same names, same arguments), on the process's instance."""

    @app.task(bind=True, name=TASK_EXECUTE_JOB_NAME, track_started=True)  # type: ignore[untyped-decorator]
    def execute_job(_task: Any, execute_job_args_packed: Any) -> int:
        args = unpack_value(execute_job_args_packed, as_type=ExecuteRunArgs)
        return _execute_run_command_body(
            instance=process_instance(),
            run_id=args.run_id,
            write_stream_fn=_ignore_event,
            set_exit_code_on_failure=args.set_exit_code_on_failure is not False,
        )

    @app.task(bind=True, name=TASK_RESUME_JOB_NAME, track_started=True)  # type: ignore[untyped-decorator]
    def resume_job(_task: Any, execute_job_args_packed: Any) -> int:
        # The launcher's resume_run sends its arguments under this name (dagster-celery's own
        # resume task expects another and would fail); unused while max_resume_run_attempts
        # is 0 (dagster.yaml).
        args = unpack_value(execute_job_args_packed, as_type=ResumeRunArgs)
        return _resume_run_command_body(
            instance=process_instance(),
            run_id=args.run_id,
            write_stream_fn=_ignore_event,
            set_exit_code_on_failure=args.set_exit_code_on_failure is not False,
        )


def _import_code_location() -> None:
    """Import the code location, once, before the fork."""
    from xmatch_pipeline.orchestration import definitions

    # Build the repository once so that each run's job lookup finds it built.
    definitions.defs().get_repository_def()


class _RunLog:
    """Logs each run a pool process takes and how it ends (Celery's task signals)."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}

    @staticmethod
    def _run(run_id: str) -> Any:
        return process_instance().get_run_by_id(run_id)

    @staticmethod
    def _run_id(kwargs: dict[str, Any]) -> str | None:
        packed = kwargs.get("execute_job_args_packed")
        if packed is None:
            return None
        run_id = getattr(unpack_value(packed), "run_id", None)
        return str(run_id) if run_id else None

    def taken(self, task_id: str, kwargs: dict[str, Any]) -> None:
        # No storage read here: this is on the run's queued → started path.
        run_id = self._run_id(kwargs)
        if run_id is None:
            return
        self._started[task_id] = time.monotonic()
        logger.info("run %s taken (pid %d)", run_id, os.getpid())

    def finished(self, task_id: str, kwargs: dict[str, Any]) -> None:
        run_id = self._run_id(kwargs)
        if run_id is None:
            return
        elapsed = time.monotonic() - self._started.pop(task_id, time.monotonic())
        run = self._run(run_id)
        status = run.status.value if run is not None else "unknown"
        tags = run.tags if run is not None else {}
        job = run.job_name if run is not None else "?"
        offsets = (
            f" {tags[run_tags.TOPIC]}[{tags[run_tags.PARTITION]}]@"
            f"[{tags[run_tags.START_OFFSET]},{tags[run_tags.END_OFFSET]})"
            f" attempt {tags.get(run_tags.ATTEMPT, '?')}"
            if run_tags.TOPIC in tags and run_tags.START_OFFSET in tags
            else ""
        )
        logger.info("run %s finished: %s%s, %s in %.2f s", run_id, job, offsets, status, elapsed)


def build_worker_app() -> Any:
    """The launcher's app with the run tasks and the run log, the code location imported."""
    from celery import signals

    app = _launcher_app()
    register_run_tasks(app)
    _import_code_location()
    run_log = _RunLog()

    def on_prerun(task_id: str, kwargs: dict[str, Any], **_: Any) -> None:
        run_log.taken(task_id, kwargs)

    def on_postrun(task_id: str, kwargs: dict[str, Any], **_: Any) -> None:
        run_log.finished(task_id, kwargs)

    signals.worker_process_init.connect(warm_pool_process, weak=False)
    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    return app


def worker_arguments(options: WorkerOptions) -> list[str]:
    """``celery worker`` arguments for ``options`` (prefork pool, one run per process)."""
    recycling = []
    if options.max_runs_per_child > 0:
        recycling.append(f"--max-tasks-per-child={options.max_runs_per_child}")
    if options.max_memory_per_child_mb > 0:  # Celery counts KiB
        recycling.append(f"--max-memory-per-child={options.max_memory_per_child_mb * 1024}")
    return [
        "worker",
        "--pool=prefork",
        f"--concurrency={options.concurrency}",
        f"--queues={','.join(options.queues)}",
        f"--hostname={options.node_name or default_node_name()}",
        f"--loglevel={options.log_level}",
        "--prefetch-multiplier=1",
        # Hand a run to an idle pool process, never queue it behind a busy one.
        "-O",
        "fair",
        *recycling,
        # Workers need not know each other: less chatter and a faster start.
        "--without-gossip",
        "--without-mingle",
    ]


def run_worker(options: WorkerOptions) -> None:
    """Run the worker in this process until it is stopped (SIGTERM: warm shutdown)."""
    app = build_worker_app()
    app.worker_main(argv=worker_arguments(options))
