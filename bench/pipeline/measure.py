"""Run one method over one offset range in a child process, in fresh surroundings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.pipeline.infra import (
    create_topic,
    delete_topics,
    fresh_database,
    pipeline_environment,
    unique_name,
)
from bench.pipeline.workload import PROJECT_ROOT
from xmatch_pipeline.devtools.devstack import DevstackSettings

CHILD_TIMEOUT_SECONDS = 1800


@dataclass(frozen=True)
class Surroundings:
    devstack: DevstackSettings
    index_dir: Path
    input_topic: str


def start_child(  # noqa: PLR0917
    method: str,
    surroundings: Surroundings,
    database_url: str,
    partition: int,
    start: int,
    end: int,
    profile: Path | None = None,
) -> tuple[subprocess.Popen[str], str]:
    """Start the child; returns it and the output topic it writes (created here)."""
    output_topic = create_topic(surroundings.devstack, unique_name(f"bench-out-{method}"))
    environment = pipeline_environment(
        surroundings.devstack,
        database_url=database_url,
        input_topic=surroundings.input_topic,
        output_topic=output_topic,
        group_id=unique_name(f"bench-{method}"),
        index_dir=surroundings.index_dir,
    )
    command = [sys.executable, "-m", "bench.pipeline.child", method, surroundings.input_topic,
               str(partition), str(start), str(end)]  # fmt: skip
    if profile is not None:
        command += ["--profile", str(profile)]
    child = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env=os.environ | environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return child, output_topic


def finish_child(child: subprocess.Popen[str], method: str) -> dict[str, Any]:
    stdout, stderr = child.communicate(timeout=CHILD_TIMEOUT_SECONDS)
    if child.returncode != 0:
        raise RuntimeError(f"{method} failed (exit {child.returncode}):\n{stderr[-4000:]}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def measure(
    method: str,
    surroundings: Surroundings,
    start: int,
    end: int,
    *,
    partition: int = 0,
    profile: Path | None = None,
) -> dict[str, Any]:
    """One method over ``[start, end)`` with its own database, group and output topic."""
    with fresh_database(surroundings.devstack, with_schema=False) as database_url:
        child, output_topic = start_child(
            method, surroundings, database_url, partition, start, end, profile
        )
        try:
            result = finish_child(child, method)
        finally:
            delete_topics(surroundings.devstack, [output_topic])
    expected = end - start
    if result["messages"] != expected:
        raise RuntimeError(f"{method} processed {result['messages']} of {expected} messages")
    return result


def measure_parallel(
    method: str, surroundings: Surroundings, ranges: list[tuple[int, int, int]]
) -> list[dict[str, Any]]:
    """Runs over several ``(partition, start, end)`` at once, one process each, one database."""
    with fresh_database(surroundings.devstack, with_schema=False) as database_url:
        started = [
            start_child(method, surroundings, database_url, partition, start, end)
            for partition, start, end in ranges
        ]
        try:
            return [finish_child(child, method) for child, _ in started]
        finally:
            delete_topics(surroundings.devstack, [topic for _, topic in started])
