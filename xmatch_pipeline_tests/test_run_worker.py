"""``xmatch-pipeline worker``'s Celery arguments and the project's launcher settings, on plain
values (the worker itself runs in test_run_worker_faults.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import yaml

from xmatch_pipeline.orchestration.celery_worker import (
    WorkerOptions,
    default_node_name,
    worker_arguments,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _options(**overrides: object) -> WorkerOptions:
    values: dict[str, object] = {
        "concurrency": 3,
        "queues": ["dagster", "group-a"],
        "max_runs_per_child": 200,
        "max_memory_per_child_mb": 2048,
        "node_name": "xmatch-test@host",
    }
    values.update(overrides)
    return WorkerOptions(**values)  # type: ignore[arg-type]


def test_worker_runs_a_prefork_pool_taking_one_run_per_process_at_a_time():
    arguments = worker_arguments(_options())

    assert arguments[0] == "worker"
    assert "--pool=prefork" in arguments
    assert "--concurrency=3" in arguments
    assert "--queues=dagster,group-a" in arguments
    assert "--prefetch-multiplier=1" in arguments
    assert "--hostname=xmatch-test@host" in arguments


def test_pool_processes_are_recycled_after_runs_or_memory_in_kib():
    arguments = worker_arguments(_options())

    assert "--max-tasks-per-child=200" in arguments
    assert f"--max-memory-per-child={2048 * 1024}" in arguments


def test_zero_means_a_pool_process_is_never_recycled():
    arguments = worker_arguments(_options(max_runs_per_child=0, max_memory_per_child_mb=0))

    assert not [a for a in arguments if a.startswith(("--max-tasks", "--max-memory"))]


def test_default_node_name_is_unique_per_process_on_this_host():
    name = default_node_name()

    assert name == f"xmatch-{os.getpid()}@{socket.gethostname()}"


def test_dagster_yaml_launches_runs_on_celery_and_keeps_the_queue_limits():
    settings = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())

    launcher = settings["run_launcher"]
    assert launcher["class"] == "XmatchCeleryRunLauncher"
    assert launcher["config"]["broker"] == {"env": "CELERY_BROKER_URL"}
    assert launcher["config"]["backend"] == {"env": "CELERY_RESULT_BACKEND"}
    # Dagster's queue, dequeued more often than once a second (run_coordinator.py).
    assert settings["run_coordinator"]["class"] == "XmatchQueuedRunCoordinator"
    assert settings["run_coordinator"]["config"]["dequeue_interval_seconds"] < 1
    # A broker outage puts runs back in the queue instead of failing them.
    assert settings["run_coordinator"]["config"]["max_user_code_failure_retries"] > 0
    limits = settings["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {
        "key": "xmatch/partition_key",
        "value": {"applyLimitPerUniqueValue": True},
        "limit": 1,
    } in limits
    assert settings["run_monitoring"]["enabled"] is True
    assert settings["run_monitoring"]["max_resume_run_attempts"] == 0
