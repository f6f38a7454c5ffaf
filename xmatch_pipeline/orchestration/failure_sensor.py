"""``run_failure_alerts``: on every failed run of the pipeline's jobs, log the range, the
reason and the attempt, and send them where ``XMATCH_FAILURE_TOPIC`` /
``XMATCH_FAILURE_WEBHOOK_URL`` say (``xmatch_pipeline.failure_alerts``)."""

from dagster import (
    DefaultSensorStatus,
    RunFailureSensorContext,
    SensorDefinition,
    run_failure_sensor,
)

from xmatch_pipeline.failure_alerts import RunFailureAlert, send_to_kafka, send_to_webhook
from xmatch_pipeline.orchestration import run_tags
from xmatch_pipeline.orchestration.jobs import xmatch_backfill, xmatch_microbatch
from xmatch_pipeline.orchestration.partitions import run_mode
from xmatch_pipeline.orchestration.resources import XmatchResource

PARTITION_TAG = "dagster/partition"


def failure_alert(context: RunFailureSensorContext) -> RunFailureAlert:
    run = context.dagster_run
    tags = run.tags
    reason = context.failure_event.message or "no reason recorded"
    step_failures = context.get_step_failure_events()
    if step_failures and step_failures[0].step_failure_data.error is not None:
        error = step_failures[0].step_failure_data.error
        reason = f"{step_failures[0].step_key}: {error.message.strip()}"
    attempt = tags.get(run_tags.ATTEMPT)
    return RunFailureAlert(
        run_id=run.run_id,
        job=run.job_name,
        offset_range=tags.get(PARTITION_TAG),
        attempt=int(attempt) if attempt and attempt.isdigit() else None,
        mode=run_mode(tags)[0],
        reason=reason[:2000],
    )


def report_failure(context: RunFailureSensorContext, xmatch: XmatchResource) -> RunFailureAlert:
    alert = failure_alert(context)
    context.log.error(str(alert))
    services = xmatch.services()
    settings = services.settings
    if settings.failure_alert_topic is not None:
        send_to_kafka(alert, services.publisher_kafka, settings.failure_alert_topic)
    if settings.failure_webhook_url is not None:
        send_to_webhook(alert, settings.failure_webhook_url)
    return alert


def build_run_failure_alerts() -> SensorDefinition:
    @run_failure_sensor(
        name="run_failure_alerts",
        monitored_jobs=[xmatch_microbatch, xmatch_backfill],
        default_status=DefaultSensorStatus.RUNNING,
        description="Logs each failed run (range, reason, attempt) and sends it to "
        "XMATCH_FAILURE_TOPIC and/or XMATCH_FAILURE_WEBHOOK_URL when set.",
    )
    def run_failure_alerts(context: RunFailureSensorContext, xmatch: XmatchResource) -> None:
        report_failure(context, xmatch)

    return run_failure_alerts
