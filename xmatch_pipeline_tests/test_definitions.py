"""The code location: it loads with valid settings, holds the jobs, the sensor and the
lineage, and refuses to load with a bad setting, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from dagster import DefaultSensorStatus, Definitions

from xmatch_pipeline.orchestration.assets import (
    CROSSMATCH_TABLES,
    DEAD_LETTER_TOPIC,
    INPUT_TOPICS,
    OUTPUT_TOPIC,
)
from xmatch_pipeline.orchestration.definitions import build_definitions
from xmatch_pipeline.orchestration.resources import XmatchResource
from xmatch_pipeline.settings import load_settings
from xmatch_pipeline_tests.pipeline_fixtures import SETTING_NAMES

ENVIRONMENT = {
    "CONSUMER_SERVER": "127.0.0.1:1",
    "TOPIC_STRATEGY_FORMAT": "ztf_%s_programid1",
    "CONSUMER_GROUP_ID": "xmatch",
    "PRODUCER_TOPIC": "xmatch",
    "DB_HOST": "127.0.0.1",
    "DB_PORT": "1",
    "DB_USER": "xmatch",
    "DB_PASSWORD": "definitions-secret",
    "DB_NAME": "xmatch",
    "XMATCH_SENSOR_INTERVAL_SECONDS": "45",
}


@pytest.fixture(scope="module")
def definitions() -> Definitions:
    """Built from ENVIRONMENT's settings, as the code location builds them from its own."""
    return build_definitions(load_settings(ENVIRONMENT))


def test_definitions_validate_with_both_jobs_in_process(definitions: Definitions) -> None:
    Definitions.validate_loadable(definitions)
    repository = definitions.get_repository_def()
    assert {job.name for job in repository.get_all_jobs()} >= {
        "xmatch_microbatch",
        "xmatch_backfill",
    }
    for name in ("xmatch_microbatch", "xmatch_backfill"):
        job = definitions.resolve_job_def(name)
        assert job.executor_def.name == "in_process"
        assert "xmatch" in job.resource_defs
    graph = definitions.resolve_job_def("xmatch_microbatch").graph
    upstream = {
        node.name: {
            output.node_name
            for output in graph.dependency_structure.all_upstream_outputs_from_node(node.name)
        }
        for node in graph.nodes
    }
    assert upstream == {
        "check_offset_range": set(),
        "crossmatch_offset_range": {"check_offset_range"},
        "record_run_metrics": {"crossmatch_offset_range"},
    }


def test_sensor_runs_the_micro_batch_job_at_the_configured_interval(
    definitions: Definitions,
) -> None:
    sensor = definitions.resolve_sensor_def("kafka_lag_sensor")
    assert sensor.minimum_interval_seconds == 45
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    assert sensor.job_name == "xmatch_microbatch"


def test_assets_draw_the_lineage_from_input_topics_to_output_topic(
    definitions: Definitions,
) -> None:
    graph = definitions.resolve_asset_graph()
    assert graph.get(INPUT_TOPICS).parent_keys == set()
    assert graph.get(CROSSMATCH_TABLES).parent_keys == {INPUT_TOPICS}
    assert graph.get(OUTPUT_TOPIC).parent_keys == {CROSSMATCH_TABLES}
    assert graph.get(DEAD_LETTER_TOPIC).parent_keys == {INPUT_TOPICS}


def test_the_resource_takes_no_config_so_secrets_never_reach_the_launchpad(
    definitions: Definitions,
) -> None:
    assert definitions.resources is not None
    resource = definitions.resources["xmatch"]
    assert isinstance(resource, XmatchResource)  # a plain object: no config schema at all
    assert resource.settings.database.password.get_secret_value() == "definitions-secret"


def _import_definitions(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {name: value for name, value in os.environ.items() if name not in SETTING_NAMES}
    return subprocess.run(
        [sys.executable, "-c", "import xmatch_pipeline.orchestration.definitions as d; d.defs()"],
        env=clean | environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_loading_the_code_location_checks_the_settings(definitions: Definitions) -> None:
    """A good environment loads; a bad one stops the load."""
    good = _import_definitions(ENVIRONMENT)
    assert good.returncode == 0, good.stderr
    broken = {k: v for k, v in ENVIRONMENT.items() if k != "DB_HOST"} | {"DB_PORT": "port"}
    bad = _import_definitions(broken)
    assert bad.returncode != 0
    assert "SettingsError" in bad.stderr
    assert "DB_HOST is not set" in bad.stderr
    assert "DB_PORT='port' is not a whole number" in bad.stderr
    assert "definitions-secret" not in bad.stderr


def test_the_micro_batch_job_and_its_assets_are_partitioned_by_offset_range(
    definitions: Definitions,
) -> None:
    job = definitions.resolve_job_def("xmatch_microbatch")
    assert job.partitions_def is not None
    assert job.partitions_def.name == "offset_ranges"  # type: ignore[attr-defined]
    # A key alone gives the run's config and the range's tags (what a UI backfill launches).
    key = "ztf_20200101_programid1/1/500-1000"
    partitioned = job.partitioned_config
    assert partitioned is not None
    assert partitioned.get_run_config_for_partition_key(key) == {
        "ops": {
            "check_offset_range": {
                "config": {
                    "topic": "ztf_20200101_programid1",
                    "partition": 1,
                    "start_offset": 500,
                    "end_offset": 1000,
                }
            }
        }
    }
    assert partitioned.get_tags_for_partition_key(key)["xmatch/partition_key"] == (
        "ztf_20200101_programid1:1"
    )
    graph = definitions.resolve_asset_graph()
    assert graph.get(CROSSMATCH_TABLES).partitions_def == job.partitions_def
    assert graph.get(INPUT_TOPICS).partitions_def is None
    checks = {key.name for key in graph.asset_check_keys if key.asset_key == CROSSMATCH_TABLES}
    assert checks == {
        "offsets_accounted",
        "no_duplicate_candid",
        "match_rate_in_bounds",
        "lag_below_threshold",
    }
    assert definitions.resolve_sensor_def("run_failure_alerts").default_status == (
        DefaultSensorStatus.RUNNING
    )
