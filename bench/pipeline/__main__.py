"""One command for every pipeline benchmark: ``.venv/bin/python -m bench.pipeline``.

Brings the devstack up, loads generated alerts into a fresh topic, then measures, side by
side in one run: throughput of the job, the runner alone, the pass-through limit and the
naive way over several batch sizes (and the memory of those runs), a profile of one run,
scaling over two partitions, latency under a steady load with the real daemon, and
optionally the crossmatch engine benchmark. Writes ``docs/benchmarks.md``, the plot
``docs/benchmark_throughput.png`` and the raw numbers ``bench/results/pipeline.json``
(``--quick``: a few minutes, written to ``bench/results/pipeline_quick.*``).
"""

from __future__ import annotations

import argparse
import json
import pstats
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.pipeline.infra import fresh_topic, produce_alerts
from bench.pipeline.latency import measure_latency, run_phases, summary
from bench.pipeline.measure import Surroundings, measure, measure_parallel
from bench.pipeline.report import write_plot, write_report
from bench.pipeline.stats import load_average, machine
from bench.pipeline.workload import PROJECT_ROOT, AlertCache, catalog_index
from xmatch_pipeline.devtools.devstack import ensure_devstack_running


@dataclass(frozen=True)
class Plan:
    """What to measure; ``--quick`` shrinks every part."""

    sizes: tuple[int, ...]
    large_size: int
    repeats: int
    large_repeats: int
    naive_sizes: tuple[int, ...]
    naive_repeats_large: int
    runner_sizes: tuple[int, ...]
    cold_sizes: tuple[int, ...]
    scaling_size: int
    scaling_repeats: int
    latency_seconds: float
    latency_rate: float
    latency_partitions: int
    variant_seconds: float
    profile_size: int | None
    memory_sizes: tuple[int, ...]
    memory_repeats: int


FULL = Plan(
    sizes=(1_000, 5_000, 20_000), large_size=50_000, repeats=3, large_repeats=3,
    naive_sizes=(1_000, 5_000, 50_000), naive_repeats_large=1, runner_sizes=(1_000, 5_000),
    cold_sizes=(1_000, 5_000), scaling_size=5_000,
    scaling_repeats=2, latency_seconds=300, latency_rate=300, latency_partitions=2,
    variant_seconds=0, profile_size=5_000, memory_sizes=(5_000, 20_000, 50_000),
    memory_repeats=2,
)  # fmt: skip
QUICK = Plan(
    sizes=(500,), large_size=2_000, repeats=1, large_repeats=1, naive_sizes=(500, 2_000),
    naive_repeats_large=1, runner_sizes=(500,), cold_sizes=(500,), scaling_size=1_000,
    scaling_repeats=1, latency_seconds=45, latency_rate=300, latency_partitions=2,
    variant_seconds=30, profile_size=None, memory_sizes=(500, 2_000), memory_repeats=1,
)  # fmt: skip


RESULTS_DIR = PROJECT_ROOT / "bench" / "results"

#: A variant of the project's dagster.yaml tried beside it: the queue checked every second
#: and runs launched in parallel threads instead of one after the other.
QUEUE_VARIANT = {"dequeue_interval_seconds": 1, "dequeue_use_threads": True}


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _throughput(plan: Plan, surroundings: Surroundings) -> list[dict[str, Any]]:
    """Every method at every size, interleaved within each repeat (side by side)."""
    results: list[dict[str, Any]] = []
    schedule = [(size, plan.repeats) for size in plan.sizes] + [
        (plan.large_size, plan.large_repeats)
    ]
    for repeat in range(max(plan.repeats, plan.large_repeats)):
        for size, repeats in schedule:
            if repeat >= repeats:
                continue
            methods = ["passthrough", "job"]
            methods += ["job_cold"] if size in plan.cold_sizes else []
            methods += ["runner"] if size in plan.runner_sizes else []
            # The naive way's large runs take minutes each: fewer repeats there.
            naive_repeats = plan.naive_repeats_large if size == plan.large_size else repeats
            methods += ["naive"] if size in plan.naive_sizes and repeat < naive_repeats else []
            for method in methods:
                result = measure(method, surroundings, 0, size)
                result |= {"size": size, "repeat": repeat}
                results.append(result)
                _log(
                    f"repeat {repeat + 1} {method:11s} {size:>6,} alerts: "
                    f"{size / result['seconds']:>6,.0f} alerts/s, {result['seconds']:6.1f} s, "
                    f"peak {result['peak_rss_mb']:,.0f} MB"
                )
    return results


def _profile(size: int, surroundings: Surroundings) -> list[dict[str, Any]]:
    """cProfile of one runner run: the functions with the most own time."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "runner.prof"
        result = measure("runner", surroundings, 0, size, profile=path)
        stats = pstats.Stats(str(path))
        total = result["seconds"]
        rows = []
        entries = stats.stats  # type: ignore[attr-defined]
        for (filename, line, function), (_, _, own, cumulative, _) in entries.items():
            rows.append(
                {
                    "function": f"{Path(filename).name}:{line}({function})",
                    "own_seconds": own,
                    "cumulative_seconds": cumulative,
                    "share": own / total,
                }
            )
    rows.sort(key=lambda row: row["own_seconds"], reverse=True)
    _log(f"profiled a {size:,}-alert runner run ({result['seconds']:.1f} s under cProfile)")
    return rows[:15]


def _memory(plan: Plan, surroundings: Surroundings) -> list[dict[str, Any]]:
    """Peak RSS (the child's own ``VmHWM``) of job runs of growing size."""
    results = []
    for repeat in range(plan.memory_repeats):
        for size in plan.memory_sizes:
            result = measure("job", surroundings, 0, size) | {"size": size, "repeat": repeat}
            results.append(result)
            _log(f"memory repeat {repeat + 1}: job {size:>6,} alerts: "
                 f"peak {result['high_water_mb']:,.0f} MB")  # fmt: skip
    return results


def _scaling(plan: Plan, surroundings: Surroundings) -> list[dict[str, Any]]:
    """One job on one partition vs two jobs on two partitions at once."""
    results = []
    size = plan.scaling_size
    for repeat in range(plan.scaling_repeats):
        single = measure("job", surroundings, 0, size)
        pair = measure_parallel("job", surroundings, [(0, 0, size), (1, 0, size)])
        wall = max(r["finished_at"] for r in pair) - min(r["started_at"] for r in pair)
        speedup = (2 * size / wall) / (size / single["seconds"])
        results.append(
            {"repeat": repeat, "size": size, "single_seconds": single["seconds"],
             "pair_wall_seconds": wall, "pair_seconds": [r["seconds"] for r in pair],
             "speedup": speedup}
        )  # fmt: skip
        _log(f"scaling repeat {repeat + 1}: one run {single['seconds']:.1f} s, two at once "
             f"{wall:.1f} s wall: speed-up {speedup:.2f}x")  # fmt: skip
    return results


def _engines(repeats: int) -> str:
    """Run ``bench.crossmatch_engines`` and return its report."""
    subprocess.run(
        [sys.executable, "-m", "bench.crossmatch_engines", "--repeats", str(repeats)],
        cwd=PROJECT_ROOT, check=True,
    )  # fmt: skip
    return (PROJECT_ROOT / "bench" / "results" / "crossmatch_engines.md").read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small runs (a few minutes)")
    parser.add_argument("--with-engines", action="store_true",
                        help="also run bench.crossmatch_engines (~100 s)")  # fmt: skip
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--with-workers", action="store_true",
                        help="then run bench.workers (queued → started, worker memory over "
                        "200 runs, two workers against one; ~15 min): every figure in one "
                        "run")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=None,
                        help="at most this many repeats of each measurement (fewer: faster, "
                        "noisier)")  # fmt: skip
    parser.add_argument("--only", choices=("memory",),
                        help="run one phase and merge it into the saved raw results")  # fmt: skip
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report and plot from the saved raw results")  # fmt: skip
    arguments = parser.parse_args()
    if arguments.report_only:
        stem = "pipeline_quick" if arguments.quick else "pipeline"
        _write_outputs(json.loads((RESULTS_DIR / f"{stem}.json").read_text()), arguments.quick)
        return
    plan = QUICK if arguments.quick else FULL
    if arguments.repeats is not None:
        plan = _with_repeats(plan, arguments.repeats)
    if arguments.only:
        _only_memory(plan, arguments.quick)
        return
    started = time.perf_counter()
    results: dict[str, Any] = {
        "quick": arguments.quick,
        "plan": plan.__dict__,
        "machine": machine(),
        "load_before": load_average(),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m bench.pipeline" + " ".join(
            ["", *(["--quick"] if arguments.quick else []),
             *(["--with-engines"] if arguments.with_engines else []),
             *(["--with-workers"] if arguments.with_workers else []),
             *([f"--repeats {arguments.repeats}"] if arguments.repeats is not None else [])]
        ),
        "phase_seconds": {},
    }  # fmt: skip

    stem = "pipeline_quick" if arguments.quick else "pipeline"

    def phase(name: str, since: float) -> float:
        """Note the phase's time and load, and save what is measured so far."""
        now = time.perf_counter()
        results["phase_seconds"][name] = now - since
        results[f"load_after_{name}"] = load_average()
        results["total_seconds"] = now - started
        (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
        return now

    _log(f"load average {results['load_before']}; devstack up")
    devstack = ensure_devstack_running()
    index_dir = catalog_index()
    cache = AlertCache()
    largest = max(plan.large_size, 2 * plan.scaling_size)
    cache.ensure(largest)
    mark = phase("setup", started)

    with fresh_topic(devstack, "bench-in") as input_topic:
        produce_alerts(devstack, input_topic, cache.read(plan.large_size))
        surroundings = Surroundings(devstack, index_dir, input_topic)
        _log("throughput")
        results["throughput"] = _throughput(plan, surroundings)
        mark = phase("throughput", mark)
        if plan.profile_size:
            results["profile"] = _profile(plan.profile_size, surroundings)
            mark = phase("profile", mark)
        _log("memory")
        results["memory"] = _memory(plan, surroundings)
        mark = phase("memory", mark)
    with fresh_topic(devstack, "bench-in-2p", partitions=2) as input_topic:
        produce_alerts(devstack, input_topic, cache.read(2 * plan.scaling_size), partitions=2)
        _log("scaling")
        results["scaling"] = _scaling(plan, Surroundings(devstack, index_dir, input_topic))
        mark = phase("scaling", mark)
    if not arguments.skip_latency:
        for name, seconds, variant in (
            ("latency", plan.latency_seconds, None),
            ("latency_variant", plan.variant_seconds, QUEUE_VARIANT),
        ):
            if not seconds:
                continue
            _log(name)
            latency = measure_latency(
                devstack, index_dir, rate=plan.latency_rate, duration=seconds,
                partitions=plan.latency_partitions, run_coordinator_config=variant,
            )  # fmt: skip
            results[name] = {
                "rate": latency.rate, "achieved_rate": latency.achieved_rate,
                "seconds": latency.duration_seconds, "partitions": latency.partitions,
                "produced": latency.produced, "received": latency.received,
                "run_coordinator_config": variant,
                **summary(latency), **run_phases(latency.dagster_runs),
            }  # fmt: skip
            _log(f"{name}: {json.dumps(results[name])}")
            mark = phase(name, mark)
    if arguments.with_engines:
        _log("crossmatch engines")
        results["engines"] = _engines(1 if arguments.quick else 3)
        mark = phase("engines", mark)
    results["load_after"] = load_average()
    results["total_seconds"] = time.perf_counter() - started

    (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
    _write_outputs(results, arguments.quick)
    if arguments.with_workers:
        _log("run workers (bench.workers)")
        # Its own section of the same report, kept by the report above.
        subprocess.run([sys.executable, "-m", "bench.workers"], cwd=PROJECT_ROOT, check=True)
        _log(f"all done in {(time.perf_counter() - started) / 60:.1f} min")


def _with_repeats(plan: Plan, repeats: int) -> Plan:
    """The plan with at most ``repeats`` of every repeated measurement."""
    return replace(
        plan,
        repeats=min(plan.repeats, repeats),
        large_repeats=min(plan.large_repeats, repeats),
        naive_repeats_large=min(plan.naive_repeats_large, repeats),
        scaling_repeats=min(plan.scaling_repeats, repeats),
        memory_repeats=min(plan.memory_repeats, repeats),
    )


def _only_memory(plan: Plan, quick: bool) -> None:
    stem = "pipeline_quick" if quick else "pipeline"
    path = RESULTS_DIR / f"{stem}.json"
    results = json.loads(path.read_text())
    started = time.perf_counter()
    devstack = ensure_devstack_running()
    with fresh_topic(devstack, "bench-in") as input_topic:
        produce_alerts(devstack, input_topic, AlertCache().read(max(plan.memory_sizes)))
        surroundings = Surroundings(devstack, catalog_index(), input_topic)
        results["memory"] = _memory(plan, surroundings)
    results["phase_seconds"]["memory"] = time.perf_counter() - started
    results["load_after_memory"] = load_average()
    results["memory_run_separately"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    path.write_text(json.dumps(results, indent=1, default=str))
    _write_outputs(results, quick)


def _write_outputs(results: dict[str, Any], quick: bool) -> None:
    stem = "pipeline_quick" if quick else "pipeline"
    plot = (RESULTS_DIR / f"{stem}.png") if quick else (
        PROJECT_ROOT / "docs" / "benchmark_throughput.png"
    )  # fmt: skip
    report = (RESULTS_DIR / f"{stem}.md") if quick else (PROJECT_ROOT / "docs" / "benchmarks.md")
    write_plot(results, plot)
    from bench.workers import kept_workers_section

    old = report.read_text() if report.exists() else ""
    report.write_text(
        kept_workers_section(write_report(results, plot.relative_to(report.parent)), old)
    )
    _log(f"done in {results['total_seconds'] / 60:.1f} min: {report}, {plot}")


if __name__ == "__main__":
    main()
