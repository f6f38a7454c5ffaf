"""The code location. Everything is built from validated settings in ``build_definitions``;
tests call it with settings of their own, and importing this module reads nothing.

Dagster loads ``defs`` (lazy definitions): the first load validates the environment's
settings, and a bad setting stops it with a message naming every variable at fault. The
result is kept, so a long-lived worker's every run finds the same repository built.
"""

import os
from functools import cache

from dagster import Definitions, definitions, mem_io_manager

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
        resources={"xmatch": XmatchResource(settings), "io_manager": mem_io_manager},
    )


@cache
def _from_environment() -> Definitions:
    return build_definitions(load_settings(os.environ))


@definitions
def defs() -> Definitions:
    """The deployment's definitions, from ``os.environ``, built once per process."""
    return _from_environment()
