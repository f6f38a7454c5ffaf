"""The run queue's sub-second dequeue interval, the launch at submission of a run the queue
would start at once, and the launcher connected before the first launch
(orchestration/run_coordinator.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dagster import DagsterRun
from dagster._core.run_coordinator.queued_run_coordinator import RunQueueConfig

from xmatch_pipeline.devtools.devstack import DevstackSettings
from xmatch_pipeline.orchestration.run_coordinator import (
    DEFAULT_DEQUEUE_INTERVAL_SECONDS,
    XmatchQueuedRunCoordinator,
    dequeue_interval,
    launches_at_once,
)
from xmatch_pipeline_tests.conftest import PROJECT_ROOT


def test_a_fraction_of_a_second_is_kept_as_given() -> None:
    assert dequeue_interval(0.1) == 0.1
    assert dequeue_interval(2) == 2.0


def test_no_interval_is_dagsters_default() -> None:
    assert dequeue_interval(None) == DEFAULT_DEQUEUE_INTERVAL_SECONDS


@pytest.mark.parametrize("value", [0, -0.5, True, "0.1"])
def test_an_interval_that_is_not_a_positive_number_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="dequeue_interval_seconds must be a number"):
        dequeue_interval(value)


ONE_PER_PARTITION = [
    {"key": "xmatch/partition_key", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
]


def _run(partition: str) -> DagsterRun:
    """A run of one partition (the decision reads tags only: which list it is in says
    whether it is in progress or queued)."""
    return DagsterRun(job_name="xmatch_microbatch", tags={"xmatch/partition_key": partition})


def _queue(max_concurrent_runs: int = 4) -> RunQueueConfig:
    return RunQueueConfig(max_concurrent_runs, ONE_PER_PARTITION)


def test_a_run_of_a_free_partition_with_a_free_slot_is_launched_at_once() -> None:
    other_running = [_run("ztf:1")]
    assert launches_at_once(_run("ztf:0"), other_running, [], _queue())


def test_a_successor_waits_behind_its_partitions_run_in_progress() -> None:
    running = [_run("ztf:0")]
    assert not launches_at_once(_run("ztf:0"), running, [], _queue())


def test_a_run_queued_for_the_same_partition_keeps_its_place() -> None:
    waiting = [_run("ztf:0")]
    assert not launches_at_once(_run("ztf:0"), [], waiting, _queue())


def test_no_slot_left_under_the_fleets_limit_means_the_queue() -> None:
    running = [_run(f"ztf:{p}") for p in range(4)]
    assert not launches_at_once(_run("ztf:9"), running, [], _queue(4))
    assert launches_at_once(_run("ztf:9"), running, [], _queue(-1))  # Dagster's "no limit"


def test_queued_runs_the_next_pass_would_launch_take_the_free_slots_first() -> None:
    running = [_run("ztf:0"), _run("ztf:1")]
    launchable = [_run("ztf:2"), _run("ztf:3")]
    assert not launches_at_once(_run("ztf:9"), running, launchable, _queue(4))
    # Queued successors held by their own partition's run take no slot from it.
    held = [_run("ztf:0"), _run("ztf:1")]
    assert launches_at_once(_run("ztf:9"), running, held, _queue(4))


def test_the_queue_limits_and_retries_are_dagsters_own() -> None:
    coordinator = XmatchQueuedRunCoordinator(
        dequeue_interval_seconds=0.25,
        max_concurrent_runs=3,
        tag_concurrency_limits=[{"key": "k", "value": {"applyLimitPerUniqueValue": True}}],
        max_user_code_failure_retries=7,
    )

    assert coordinator.dequeue_interval_seconds == 0.25
    queue = coordinator.get_run_queue_config()
    assert queue.max_concurrent_runs == 3
    assert queue.max_user_code_failure_retries == 7
    assert queue.tag_concurrency_limits == [
        {"key": "k", "value": {"applyLimitPerUniqueValue": True}}
    ]


def test_the_daemons_instance_has_its_launcher_connected_once_it_reads_the_queue(
    devstack: DevstackSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon reads the coordinator as it starts: by then the Celery launcher is built
    and its broker connection open, on the real Redis."""
    from dagster import DagsterInstance

    shutil.copy(PROJECT_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    for name, value in devstack.as_environment().items():
        if name.startswith(("DAGSTER_PG_", "CELERY_")):
            monkeypatch.setenv(name, value)

    instance = DagsterInstance.get()
    try:
        assert instance._run_launcher is None  # built lazily by Dagster
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, XmatchQueuedRunCoordinator)
        launcher = instance._run_launcher
        assert launcher is not None
        # The broker connection is open in the launcher's pool: the first launch reuses it.
        with launcher.celery.pool.acquire(block=False) as connection:
            assert connection.connected
    finally:
        instance.dispose()


def test_an_instance_without_the_launchers_settings_still_reads_its_queue(
    devstack: DevstackSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that only queues runs may lack CELERY_BROKER_URL: the queue loads, and the
    launcher's own error waits for a launch."""
    from dagster import DagsterInstance

    shutil.copy(PROJECT_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    for name, value in devstack.as_environment().items():
        if name.startswith("DAGSTER_PG_"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)

    instance = DagsterInstance.get()
    try:
        assert isinstance(instance.run_coordinator, XmatchQueuedRunCoordinator)
        with pytest.raises(Exception, match="CELERY_BROKER_URL"):
            _ = instance.run_launcher
    finally:
        instance.dispose()
