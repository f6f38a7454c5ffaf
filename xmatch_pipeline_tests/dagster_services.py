"""The deployment as it runs in production, for the fault tests: the real Dagster daemon
(sensor, run queue, run monitoring), the Celery run launcher and ``xmatch-pipeline worker``
processes, on the devstack's Kafka, PostgreSQL and Redis.

Each deployment has its own Dagster storage (a fresh database), its own Celery queue (so a
task left by another test never reaches its workers) and the project's dagster.yaml with
short monitoring intervals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from xmatch_pipeline.devtools.devstack import DevstackSettings
from xmatch_pipeline.orchestration.jobs import xmatch_microbatch
from xmatch_pipeline_tests.pipeline_fixtures import fresh_database

PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: Run monitoring in the tests: every second, so a dead worker is seen in about 5 s.
MONITOR_INTERVAL_SECONDS = 1
STOP_GRACE_SECONDS = 20.0
T = TypeVar("T")


def instance_settings(queue: str, **monitoring: int) -> dict[str, Any]:
    """The project's dagster.yaml with its own queue and faster monitoring."""
    settings: dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    settings["run_launcher"]["config"]["default_queue"] = queue
    settings["run_monitoring"] |= {"poll_interval_seconds": MONITOR_INTERVAL_SECONDS, **monitoring}
    settings["run_coordinator"]["config"]["user_code_failure_retry_delay"] = 1
    return settings


def wait_for(what: str, check: Callable[[], T | None], timeout_seconds: float) -> T:
    """Poll ``check`` until it returns something, or fail saying what never happened."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_seconds:g} s")
        time.sleep(0.2)


@dataclass
class Deployment:
    """A daemon and workers over one pipeline environment; ``instance`` is the tests' view."""

    home: Path
    environment: dict[str, str]
    queue: str
    instance: DagsterInstance
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = (self.home / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command,
            cwd=self.home,
            env=self.environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed as one host would die
        )
        log.close()
        self.processes.append(process)
        return process

    def start_daemon(self) -> subprocess.Popen[bytes]:
        daemon = str(Path(sys.executable).with_name("dagster-daemon"))
        return self._spawn("daemon", [daemon, "run", "-w", str(PROJECT_ROOT / "workspace.yaml")])

    def start_worker(self, name: str = "worker") -> subprocess.Popen[bytes]:
        """An ``xmatch-pipeline worker`` on this deployment's queue, one pool process."""
        command = [
            sys.executable, "-m", "xmatch_pipeline.cli.main", "worker",
            "--concurrency", "1", "--queues", self.queue, "--log-level", "INFO",
        ]  # fmt: skip
        worker = self._spawn(name, command)
        wait_for(f"{name} ready", lambda: self.worker_ready(worker, name), 90)
        return worker

    def worker_ready(self, worker: subprocess.Popen[bytes], name: str) -> bool:
        if worker.poll() is not None:
            raise AssertionError(f"{name} exited:\n{self.log(name)[-3000:]}")
        return " ready." in self.log(name)

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill_group(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL a process and every process it started (a lost host)."""
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill_group(process)

    def microbatch_runs(self) -> list[DagsterRun]:
        """Every run of ``xmatch_microbatch``, oldest first."""
        runs = self.instance.get_runs(RunsFilter(job_name=xmatch_microbatch.name))
        return sorted(runs, key=lambda run: int(run.tags.get("xmatch/attempt", "0")))

    def run_with_status(self, *statuses: DagsterRunStatus) -> DagsterRun | None:
        runs = self.instance.get_runs(
            RunsFilter(job_name=xmatch_microbatch.name, statuses=list(statuses)), limit=1
        )
        return runs[0] if runs else None

    def diagnostics(self) -> str:
        """The end of every log, for an assertion message."""
        names = ("daemon", *(p.stem for p in self.home.glob("worker*.log")))
        return "\n".join(f"--- {name}.log\n{self.log(name)[-2500:]}" for name in names)


@contextmanager
def dagster_deployment(
    devstack: DevstackSettings,
    pipeline_environment: Mapping[str, str],
    home: Path,
    **monitoring: int,
) -> Iterator[Deployment]:
    """A Dagster home with the project's instance settings, a fresh storage database, and the
    environment the daemon and the workers share; processes are started by the test."""
    queue = f"xmatch-test-{uuid.uuid4().hex[:8]}"
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_settings(queue, **monitoring)))
    with fresh_database(devstack.dagster_postgres_url) as dagster_url:
        from sqlalchemy import make_url

        storage = {
            **{k: v for k, v in devstack.as_environment().items() if k.startswith("DAGSTER_PG_")},
            "DAGSTER_PG_DB": make_url(dagster_url).database or "",
            "CELERY_BROKER_URL": devstack.celery_broker_url,
            "CELERY_RESULT_BACKEND": devstack.celery_result_backend_url,
        }
        environment = {
            **os.environ,
            **pipeline_environment,
            **storage,
            "DAGSTER_HOME": str(home),
            "XMATCH_SENSOR_INTERVAL_SECONDS": "5",
        }
        saved = {name: os.environ.get(name) for name in storage}
        os.environ.update(storage)  # the tests' instance reads dagster.yaml's {env: ...}
        instance = DagsterInstance.from_config(str(home))
        deployment = Deployment(home, environment, queue, instance)
        try:
            yield deployment
        finally:
            deployment.stop()
            instance.dispose()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
