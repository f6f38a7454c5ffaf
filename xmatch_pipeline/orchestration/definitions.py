"""The code location. Settings are validated here, when it loads: a bad setting stops the
load with a message naming every variable at fault."""

import os

from dagster import Definitions, mem_io_manager

from xmatch_pipeline.orchestration.assets import ASSET_SPECS
from xmatch_pipeline.orchestration.failure_sensor import build_run_failure_alerts
from xmatch_pipeline.orchestration.jobs import add_offset_ranges, xmatch_backfill, xmatch_microbatch
from xmatch_pipeline.orchestration.range_checks import RANGE_CHECKS
from xmatch_pipeline.orchestration.resources import XmatchResource
from xmatch_pipeline.orchestration.sensors import build_kafka_lag_sensor
from xmatch_pipeline.settings import PipelineSettings, load_settings


def build_definitions(settings: PipelineSettings) -> Definitions:
    return Definitions(
        assets=ASSET_SPECS,
        asset_checks=RANGE_CHECKS,
        jobs=[xmatch_microbatch, xmatch_backfill, add_offset_ranges],
        sensors=[
            build_kafka_lag_sensor(settings.sensor_interval_seconds),
            build_run_failure_alerts(),
        ],
        # Ops hand each other small reports in one process: nothing to keep on disk.
        resources={"xmatch": XmatchResource(), "io_manager": mem_io_manager},
    )


defs = build_definitions(load_settings(os.environ))
