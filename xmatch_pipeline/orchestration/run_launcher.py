"""The run launcher: dagster-celery's ``CeleryRunLauncher`` with two gaps closed.

Runs go as Celery tasks to ``xmatch-pipeline worker`` processes, which execute them in warm
pool processes (no process start and no imports per run).

1. **A dead worker is seen.** dagster-celery reads the task's state from the result backend.
   A pool process killed mid-run is reported by its worker (the task turns FAILURE), but a
   whole worker killed (host lost, OOM-killed, SIGKILL) leaves the task STARTED for ever,
   and the run would block its partition for ever. So, for a task that claims to run, the
   worker that took it (its node name is in the task's STARTED record) is asked over the
   broker whether it still holds the task; no answer, twice, or an answer without the task,
   means the run's worker is gone and the run is failed. The worker's main process answers
   this, not the pool process busy with the run, so a long run is never mistaken for a dead
   one. Run monitoring asks once per ``run_monitoring.poll_interval_seconds``, so a dead
   worker is detected within that interval plus ``2 * WORKER_REPLY_TIMEOUT_SECONDS``.
2. **One write less per launch.** dagster-celery's launch writes two engine events to
   Dagster's storage before the task is sent; this one writes one, after (the launch is on
   every run's queued → started path).
3. **A broker outage is not the run's fault.** Before sending a run, the broker and the
   result backend are asked once, briefly, whether they answer (Celery's own publish would
   retry for ~20 s, and a backend that stays down leaves its result consumer needing a
   restart). When they do not, the error is raised as Dagster's "user code unreachable",
   which the queue answers by putting the run back in the queue
   (``max_user_code_failure_retries`` in dagster.yaml) instead of failing it: runs wait
   while Redis is down and go on when it is back.

A run failed here is retried by ``kafka_lag_sensor`` over the same range once the
partition's PostgreSQL lock is free, i.e. once the killed process is really gone.
"""

from __future__ import annotations

from typing import Any

from dagster import DagsterRun
from dagster import _check as check
from dagster._core.errors import DagsterUserCodeUnreachableError
from dagster._core.events import EngineEventData
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import pack_value
from dagster_celery.config import TASK_EXECUTE_JOB_NAME
from dagster_celery.launcher import CeleryRunLauncher, _get_run_priority
from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG, DAGSTER_CELERY_TASK_ID_TAG

#: How long a worker has to answer "do you hold this task?" (answers take milliseconds).
WORKER_REPLY_TIMEOUT_SECONDS = 2.0
#: Questions before a silent worker is taken for dead (one lost reply is not a death).
WORKER_QUESTIONS = 2
#: How long the launch waits for the broker to accept a connection.
BROKER_CHECK_TIMEOUT_SECONDS = 3.0


def _broker_errors() -> tuple[type[BaseException], ...]:
    from kombu.exceptions import OperationalError
    from redis.exceptions import RedisError

    return (OperationalError, RedisError, OSError)


class XmatchCeleryRunLauncher(CeleryRunLauncher):
    """``CeleryRunLauncher`` that fails runs whose worker died, requeues runs while the
    broker is down, and connects ahead of the first launch (configured exactly as
    ``CeleryRunLauncher`` in dagster.yaml)."""

    def warm_up(self) -> None:
        """Build the Celery app and connect to the broker and the result backend ahead of
        the first launch (run_coordinator.py calls it when the daemon starts)."""
        self._check_broker_answers()

    def launch_run(self, context: LaunchRunContext) -> None:
        try:
            self._check_broker_answers()
            self._send_run(context.dagster_run)
        except _broker_errors() as error:
            raise DagsterUserCodeUnreachableError(
                f"the Celery broker ({self._broker_address()}) is unreachable: {error}. The run "
                "stays queued and is launched when the broker answers again; check Redis."
            ) from error

    def _send_run(self, run: DagsterRun) -> None:
        """dagster-celery's launch (same task, arguments, queue, priority and task-id tag),
        with one event written to Dagster's storage instead of two: the launch is on every
        run's queued → started path, and each write is a round trip to PostgreSQL."""
        args = ExecuteRunArgs(
            job_origin=check.not_none(run.job_code_origin),
            run_id=run.run_id,
            instance_ref=self._instance.get_ref(),
            set_exit_code_on_failure=True,
        )
        queue = run.tags.get(DAGSTER_CELERY_QUEUE_TAG, self.default_queue)
        # By name: the daemon needs no task object (dagster-celery registers one per launch).
        result = self.celery.send_task(
            TASK_EXECUTE_JOB_NAME,
            kwargs={"execute_job_args_packed": pack_value(args)},
            priority=_get_run_priority(run),
            queue=queue,
            routing_key=f"{queue}.{TASK_EXECUTE_JOB_NAME}",
        )
        self._instance.add_run_tags(run.run_id, {DAGSTER_CELERY_TASK_ID_TAG: result.task_id})
        self._instance.report_engine_event(
            "Celery task has been forwarded to the broker.",
            run,
            EngineEventData(
                {"Run ID": run.run_id, "Celery Task ID": result.task_id, "Celery Queue": queue}
            ),
            cls=self.__class__,
        )

    def _check_broker_answers(self) -> None:
        """Raise a broker error at once when the broker or the result backend is down."""
        with self.celery.pool.acquire(block=True, timeout=BROKER_CHECK_TIMEOUT_SECONDS) as broker:
            broker.ensure_connection(
                max_retries=1,
                interval_start=0,
                interval_step=0,
                timeout=BROKER_CHECK_TIMEOUT_SECONDS,
            )
        backend_client = getattr(self.celery.backend, "client", None)
        if backend_client is not None:  # Redis result backend
            backend_client.ping()

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        health = super().check_run_worker_health(run)
        if health.status != WorkerStatus.RUNNING:
            return health
        task_id = run.tags[DAGSTER_CELERY_TASK_ID_TAG]
        worker = self._task_worker(task_id)
        if worker is None or self._worker_holds(worker, task_id):
            return health
        # The task may have ended between the two questions: only a task that still claims
        # to run on a worker that does not run it is dead.
        recheck = super().check_run_worker_health(run)
        if recheck.status != WorkerStatus.RUNNING:
            return recheck
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"the Celery worker {worker} that took this run no longer runs it (no answer to "
            f"{WORKER_QUESTIONS} questions of {WORKER_REPLY_TIMEOUT_SECONDS:g} s each, or it "
            "does not know the task): it was killed or lost; the sensor retries the range.",
        )

    def _task_worker(self, task_id: str) -> str | None:
        """The node name of the worker that started the task (from its STARTED record)."""
        info: Any = self.celery.AsyncResult(task_id).info
        if isinstance(info, dict):
            hostname = info.get("hostname")
            return str(hostname) if hostname else None
        return None

    def _worker_holds(self, worker: str, task_id: str) -> bool:
        """Whether ``worker`` answers that the task is active or reserved there; False only
        when it does not answer at all (every question) or answers without the task."""
        for _question in range(WORKER_QUESTIONS):
            replies = self.celery.control.inspect(
                destination=[worker], timeout=WORKER_REPLY_TIMEOUT_SECONDS
            ).query_task(task_id)
            if replies:
                return any(task_id in (tasks or {}) for tasks in replies.values())
        return False

    def _broker_address(self) -> str:
        """The broker's address without credentials, for messages."""
        url = self.broker or ""
        return url.split("@")[-1] if "@" in url else url
