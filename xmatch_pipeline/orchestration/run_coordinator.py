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

**A run the queue would start at once is launched at submission.** Even at 0.5 s, waiting
for the daemon's next pass is most of a warm run's queued → started time (0.48 of 0.69 s
measured), and Dagster's loop has no way to be woken when a run is enqueued. So
``submit_run`` first asks what that pass would answer: with the queue's own limits
(``max_concurrent_runs``, the tag limits: one live run per partition) applied to the runs
in progress and the runs already queued, would this run be launched now? If so it is
launched there and then, and never enters the queue; if not (its partition has a run in
flight or waiting: a pipelined successor; the fleet is at its limit; runs wait ahead of it)
it is queued exactly as before and the daemon starts it. A run that is never ``QUEUED``
cannot be launched twice by the daemon; the check and the launch hold a lock, so threads of
one process (the sensor and backfill daemons, the webserver's requests) do not both pass
it. Two processes submitting at the same instant can overshoot ``max_concurrent_runs`` by
one (the run then waits in Redis for a pool process); two runs of one partition cannot
both work, since the partition's PostgreSQL lock refuses the second. A broker that does not
answer puts the run in the queue, where the daemon's retries take over, and sends the next
submissions straight to the queue for ``user_code_failure_retry_delay`` seconds.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Self

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, Field, RunsFilter
from dagster._core.errors import DagsterUserCodeUnreachableError
from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData
from dagster._core.launcher import LaunchRunContext, RunLauncher
from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._core.run_coordinator.queued_run_coordinator import RunQueueConfig
from dagster._core.storage.dagster_run import ACTIVE_RUN_STATUSES
from dagster._serdes import ConfigurableClassData
from dagster._utils.error import serializable_error_info_from_exc_info
from dagster._utils.tags import TagConcurrencyLimitsCounter

#: Dagster's own default, when the setting is left out.
DEFAULT_DEQUEUE_INTERVAL_SECONDS = 5.0
#: More queued runs than this and a submission goes to the queue without reading them all:
#: the queue is busy and the daemon's order decides (its own page size).
MAX_QUEUED_RUNS_READ = 100

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


def launches_at_once(
    run: DagsterRun,
    in_progress: Sequence[DagsterRun],
    queued: Sequence[DagsterRun],
    queue: RunQueueConfig,
) -> bool:
    """Whether the daemon's next pass would launch ``run`` if it were queued now, behind
    ``queued`` (oldest first): no tag limit reached by the runs in progress or waiting (so a
    partition's runs keep their order), and a free slot under ``max_concurrent_runs`` left
    after the queued runs the pass would launch first."""
    if TagConcurrencyLimitsCounter(
        list(queue.tag_concurrency_limits), [*in_progress, *queued]
    ).is_blocked(run):
        return False
    if queue.max_concurrent_runs == -1:  # Dagster's "no limit"
        return True
    pass_counter = TagConcurrencyLimitsCounter(
        list(queue.tag_concurrency_limits), list(in_progress)
    )
    launched_first = 0
    for waiting in queued:
        if not pass_counter.is_blocked(waiting):
            pass_counter.update_counters_with_launched_item(waiting)
            launched_first += 1
    return len(in_progress) + launched_first < queue.max_concurrent_runs


class XmatchQueuedRunCoordinator(QueuedRunCoordinator):
    """``QueuedRunCoordinator`` whose ``dequeue_interval_seconds`` may be below one second,
    and which launches at submission a run that the queue would start at once (configured
    as ``QueuedRunCoordinator`` in dagster.yaml, plus ``launch_at_submission``)."""

    def __init__(
        self,
        *,
        dequeue_interval_seconds: float | None = None,
        launch_at_submission: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._dequeue_interval = dequeue_interval(dequeue_interval_seconds)
        self._launch_at_submission = launch_at_submission
        self._submission_lock = threading.Lock()
        #: Until when (monotonic) submissions go to the queue: the broker did not answer.
        self._queue_only_until = 0.0

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        if (
            self._launch_at_submission
            and run.status == DagsterRunStatus.NOT_STARTED
            and time.monotonic() >= self._queue_only_until
        ):
            with self._submission_lock:
                launcher = self._launcher_if_built()
                if launcher is not None and self._may_launch_now(run):
                    return self._launch_now(run, launcher, context)
        return super().submit_run(context)

    def _launcher_if_built(self) -> RunLauncher | None:
        """The instance's launcher; None where this process cannot build it (a webserver
        without the Celery settings): its runs go to the queue, for the daemon to launch."""
        try:
            return self._instance.run_launcher
        except Exception as error:
            logger.info("runs submitted here go to the queue: no run launcher here (%s)", error)
            self._queue_only_until = float("inf")
            return None

    def _may_launch_now(self, run: DagsterRun) -> bool:
        instance = self._instance
        queue = self._queue_config()
        if queue.should_block_op_concurrency_limited_runs and (
            instance.event_log_storage.get_concurrency_keys()
        ):
            return False  # op pools in use: their slots are the daemon's to count
        queued = instance.get_runs(
            RunsFilter(statuses=[DagsterRunStatus.QUEUED]),
            limit=MAX_QUEUED_RUNS_READ,
            ascending=True,
        )
        if len(queued) >= MAX_QUEUED_RUNS_READ:
            return False
        in_progress = instance.get_runs(RunsFilter(statuses=ACTIVE_RUN_STATUSES))
        return launches_at_once(run, in_progress, queued, queue)

    def _launch_now(
        self, run: DagsterRun, launcher: RunLauncher, context: SubmitRunContext
    ) -> DagsterRun:
        """Launch as the daemon's dequeue does (same events), with its answers to a failed
        launch: an unreachable broker puts the run in the queue, anything else fails it."""
        instance = self._instance
        instance.report_dagster_event(
            DagsterEvent(DagsterEventType.PIPELINE_STARTING.value, job_name=run.job_name),
            run_id=run.run_id,
        )
        starting = self._reload(run)
        try:
            launcher.launch_run(LaunchRunContext(dagster_run=starting, workspace=context.workspace))
        except DagsterUserCodeUnreachableError:
            delay = self._queue_config().user_code_failure_retry_delay
            self._queue_only_until = time.monotonic() + delay
            instance.report_engine_event(
                "Launching at submission failed to reach the Celery broker; the run goes to "
                "the queue, which tries again",
                starting,
                EngineEventData.engine_error(serializable_error_info_from_exc_info(sys.exc_info())),
            )
            instance.report_dagster_event(DagsterEvent.job_enqueue(starting), run_id=run.run_id)
        except Exception:
            instance.report_engine_event(
                "Caught an unrecoverable error while launching the run at submission; the run "
                "fails (the sensor retries its range)",
                starting,
                EngineEventData.engine_error(serializable_error_info_from_exc_info(sys.exc_info())),
            )
            instance.report_run_failed(starting)
        return self._reload(run)

    def _queue_config(self) -> RunQueueConfig:
        """The limits the daemon applies: dagster.yaml's ``concurrency.runs`` merged with
        this coordinator's own settings, as Dagster reads them."""
        queue = self._instance.get_concurrency_config().run_queue_config
        if queue is None:
            raise RuntimeError("Dagster's instance has no run queue configuration")
        return queue

    def _reload(self, run: DagsterRun) -> DagsterRun:
        current = self._instance.get_run_by_id(run.run_id)
        if current is None:
            raise RuntimeError(f"run {run.run_id} vanished from Dagster's storage while launched")
        return current

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
        fields["launch_at_submission"] = Field(
            bool,
            is_required=False,
            default_value=True,
            description="Launch a submitted run at once when the queue's limits would let the "
            "daemon launch it now, instead of waiting for the daemon's next pass.",
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
            launch_at_submission=config_value.get("launch_at_submission", True),
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
