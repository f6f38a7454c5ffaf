"""The run queue: Dagster's ``QueuedRunCoordinator``, dequeued more often than once a second.

Dagster's queue loop (the daemon's ``QueuedRunCoordinatorDaemon``) takes its period from
the coordinator's ``dequeue_interval_seconds``, which Dagster's config accepts only as whole
seconds (1 s at least). A queued run then waits for the next pass, 0.6 s on average and more
than 1 s at worst, before it is launched: the largest part of its queued → started time on a
warm worker. This coordinator is the same queue (same limits, same submission, same daemon)
with ``dequeue_interval_seconds`` in fractions of a second. The daemon's loop sleeps in steps
of 0.5 s whenever a pass ended before the interval, so 0.5 s is the useful setting: on an
idle host a pass (a few queries) is followed by one 0.5 s step, and a queued run waits
~0.3 s on average; a shorter interval gains nothing there and, on a host so loaded that a
pass takes longer than the interval, runs the passes back to back, taking CPU from the
runs themselves.

The launcher is built and connected to the broker when the coordinator is registered with
the instance, i.e. when the daemon starts (its queue loop reads the coordinator first),
not in the first launch: building dagster-celery's app and the first broker connection take
~3 s, which the first run of a fresh daemon used to wait on top of everything else.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Self

from dagster import DagsterInstance, Field
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._serdes import ConfigurableClassData

#: Dagster's own default, when the setting is left out.
DEFAULT_DEQUEUE_INTERVAL_SECONDS = 5.0

logger = logging.getLogger("xmatch_pipeline.run_coordinator")


def dequeue_interval(value: object) -> float:
    """The configured interval in seconds, checked: a positive number."""
    if value is None:
        return DEFAULT_DEQUEUE_INTERVAL_SECONDS
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(
            f"run_coordinator.config.dequeue_interval_seconds must be a number of seconds "
            f"above 0 (e.g. 0.5), not {value!r}; fix dagster.yaml."
        )
    return float(value)


class XmatchQueuedRunCoordinator(QueuedRunCoordinator):
    """``QueuedRunCoordinator`` whose ``dequeue_interval_seconds`` may be below one second
    (configured exactly as ``QueuedRunCoordinator`` in dagster.yaml)."""

    def __init__(self, *, dequeue_interval_seconds: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._dequeue_interval = dequeue_interval(dequeue_interval_seconds)

    @property
    def dequeue_interval_seconds(self) -> float:  # type: ignore[override]  # int upstream
        return self._dequeue_interval

    def register_instance(self, instance: DagsterInstance) -> None:
        super().register_instance(instance)
        warm_launcher(instance)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        upstream: Mapping[str, Any] = QueuedRunCoordinator.config_type()  # type: ignore[assignment]
        fields = dict(upstream)
        fields["dequeue_interval_seconds"] = Field(
            float,
            is_required=False,
            description="Seconds between the daemon's passes over the queue, e.g. 0.5.",
        )
        return fields

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> Self:
        return cls(
            inst_data=inst_data,
            max_concurrent_runs=config_value.get("max_concurrent_runs"),
            tag_concurrency_limits=config_value.get("tag_concurrency_limits"),
            dequeue_interval_seconds=config_value.get("dequeue_interval_seconds"),
            dequeue_use_threads=config_value.get("dequeue_use_threads"),
            dequeue_num_workers=config_value.get("dequeue_num_workers"),
            max_user_code_failure_retries=config_value.get("max_user_code_failure_retries"),
            user_code_failure_retry_delay=config_value.get("user_code_failure_retry_delay"),
            block_op_concurrency_limited_runs=config_value.get("block_op_concurrency_limited_runs"),
        )


def warm_launcher(instance: DagsterInstance) -> None:
    """Build the instance's run launcher now and let it connect, if it knows how.

    Never raises: a process that reads the queue but never launches may lack the
    launcher's settings (the Celery variables), and a launcher whose broker is down still
    starts (its launches wait in the queue, run_launcher.py). Either way the launcher is
    then built, or its error raised, where Dagster first needs it, as without this.
    """
    try:
        warm_up = getattr(instance.run_launcher, "warm_up", None)
        if callable(warm_up):
            warm_up()
    except Exception as error:  # a cold first launch is no reason to stop
        logger.info("the run launcher is not ready ahead of the first launch: %s", error)
