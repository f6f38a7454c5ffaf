"""What a soak's samples mean: memory growth, lag, exactness; and its report section.

Pure functions of the saved samples, so the report can be rewritten from the JSON alone.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.soak.processes import LONG_LIVED_ROLES

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SOAK_RESULTS = PROJECT_ROOT / "bench" / "results" / "soak.json"
BENCHMARKS = PROJECT_ROOT / "docs" / "benchmarks.md"

MEMORY_GROWTH_TARGET = 0.10
WINDOW_SECONDS = 600.0
SECTION_HEADING = "## 9. Soak at a steady load through the daemon"


def comparison_windows(
    load_seconds: float, warmup_seconds: float
) -> tuple[tuple[float, float], tuple[float, float]]:
    """The first and the last window after the warm-up, each ``WINDOW_SECONDS`` long or half
    of what remains after the warm-up when the soak is shorter (seconds since the start)."""
    window = min(WINDOW_SECONDS, max(0.0, load_seconds - warmup_seconds) / 2)
    return (warmup_seconds, warmup_seconds + window), (load_seconds - window, load_seconds)


def long_lived_rss(sample: Mapping[str, Any]) -> int:
    rss: Mapping[str, int] = sample["rss_by_role"]
    return sum(rss.get(role, 0) for role in LONG_LIVED_ROLES)


def persistent_pids(samples: Sequence[Mapping[str, Any]]) -> set[str]:
    """Processes of the long-lived roles present in every sample: Dagster also starts
    short-lived gRPC servers (up to 4 at once were seen), which would make the role's sum
    swing by hundreds of MB between samples."""
    sets = [set(s["rss_by_pid"]) for s in samples if "rss_by_pid" in s]
    return set.intersection(*sets) if sets and len(sets) == len(samples) else set()


def replaced_process_peaks(samples: Sequence[Mapping[str, Any]]) -> list[float]:
    """Peak RSS (MB) of each long-lived-role process that did not live throughout, in the
    order they appeared: the daemon replaces its code server every minute or two, so
    growth across those generations shows here, not in one process."""
    keep = persistent_pids(samples)
    peaks: dict[str, int] = {}
    for sample in samples:
        for pid, rss in (sample.get("rss_by_pid") or {}).items():
            if pid not in keep:
                peaks[pid] = max(peaks.get(pid, 0), rss)
    return [rss / 1e6 for rss in peaks.values()]


def memory_growth(
    samples: Sequence[Mapping[str, Any]], load_seconds: float, warmup_seconds: float
) -> dict[str, Any]:
    """Mean RSS of the last window over the first: of the processes alive throughout (the
    daemon, the workspace's code server) when samples name them, else of the long-lived
    roles' sums; per role as well."""
    first, last = comparison_windows(load_seconds, warmup_seconds)
    in_windows = [
        s for s in samples if first[0] <= s["elapsed"] <= first[1] or last[0] <= s["elapsed"]
    ]
    pids = persistent_pids(in_windows)

    def mean_in(window: tuple[float, float], value: Any) -> float | None:
        values = [value(s) for s in samples if window[0] <= s["elapsed"] <= window[1]]
        return statistics.fmean(values) if values else None

    result: dict[str, Any] = {"first_window": first, "last_window": last, "roles": {}}
    for role in LONG_LIVED_ROLES:
        before = mean_in(first, lambda s, r=role: s["rss_by_role"].get(r, 0))
        after = mean_in(last, lambda s, r=role: s["rss_by_role"].get(r, 0))
        if before:
            result["roles"][role] = {"first_mb": before / 1e6, "last_mb": (after or 0) / 1e6}

    def judged(sample: Mapping[str, Any]) -> int:
        if pids:
            return sum(sample["rss_by_pid"][pid] for pid in pids)
        return long_lived_rss(sample)

    result["persistent_processes"] = len(pids)
    result["replaced_process_peaks_mb"] = replaced_process_peaks(
        [s for s in samples if s["elapsed"] >= warmup_seconds]
    )
    before, after = mean_in(first, judged), mean_in(last, judged)
    result["first_mb"] = (before or 0) / 1e6
    result["last_mb"] = (after or 0) / 1e6
    result["growth"] = (after / before - 1) if before and after is not None else None
    return result


def lag_statistics(samples: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Max and p99 over the samples of the total lag, and the largest lag of one partition."""
    totals = sorted(sum(s["lag"].values()) for s in samples if s.get("lag"))
    per_partition = [lag for s in samples for lag in (s.get("lag") or {}).values()]
    if not totals:
        return {"max_total": float("nan"), "p99_total": float("nan"), "max_partition": 0.0}
    p99 = totals[min(len(totals) - 1, int(0.99 * len(totals)))]
    return {
        "max_total": float(totals[-1]),
        "p99_total": float(p99),
        "max_partition": float(max(per_partition, default=0)),
        "final_total": float(sum(samples[-1].get("lag", {}).values())),
    }


def exactness(
    produced: Mapping[str, int], received: Iterable[str], pending: int = 0
) -> dict[str, int]:
    """Lost and duplicated alerts by key (the producer cycles alerts: keys repeat, so counts
    per key are compared). ``pending`` alerts still wait in the input (the group's lag at
    the end): missing but not lost; only what is missing beyond them is."""
    seen = Counter(received)
    missing = sum(max(0, count - seen.get(key, 0)) for key, count in produced.items())
    duplicated = sum(max(0, count - produced.get(key, 0)) for key, count in seen.items())
    return {
        "produced": sum(produced.values()),
        "received": sum(seen.values()),
        "missing": missing,
        "pending": pending,
        "lost": max(0, missing - pending),
        "duplicated": duplicated,
    }


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _judged(growth: Mapping[str, Any]) -> str:
    count = growth.get("persistent_processes", 0)
    if count:
        return f"{count} long-lived process{'es' if count > 1 else ''} alive throughout"
    return "the sums of the long-lived roles"


def _peaks(growth: Mapping[str, Any]) -> str:
    peaks = [f"{peak:,.0f}" for peak in growth.get("replaced_process_peaks_mb", [])]
    if len(peaks) > 8:
        peaks = [*peaks[:4], "…", *peaks[-4:]]
    return (", ".join(peaks) + " MB") if peaks else "n/a"


def _most_processes(samples: Sequence[Mapping[str, Any]]) -> str:
    most: dict[str, int] = {}
    for sample in samples:
        for role, count in (sample.get("count_by_role") or {}).items():
            most[role] = max(most.get(role, 0), count)
    return ", ".join(f"{role} {count}" for role, count in sorted(most.items())) or "n/a"


def report_section(results: Mapping[str, Any]) -> list[str]:
    """The soak's section of ``docs/benchmarks.md``."""
    growth = results["memory"]
    lag = results["lag"]
    exact = results["exactness"]
    (first_start, first_end), (last_start, last_end) = (
        growth["first_window"],
        growth["last_window"],
    )
    verdict = "n/a"
    if growth["growth"] is not None:
        met = growth["growth"] < MEMORY_GROWTH_TARGET
        verdict = f"{growth['growth']:+.1%} ({'met' if met else 'MISSED'}: target < 10 %)"
    return [
        SECTION_HEADING,
        "",
        f"Run by `{results['command']}` on {results['started']} ({results['machine']}; load "
        f"average {results['load_before']} before, {results['load_after']} after). A "
        f"producer at {results['rate']:g} alerts/s (achieved {results['achieved_rate']:.1f}) "
        f"for {results['load_seconds'] / 60:.1f} min over {results['partitions']} partitions, "
        "`dagster-daemon run` launching the sensor's runs (the latency harness of section 2), "
        f"sampled every {results['sample_seconds']:g} s: lag per partition (the group's "
        "committed offset against the high watermark), RSS of every process under the daemon "
        "by role, produced against read back (`read_committed`), Dagster run statuses."
        + (" **Shorter than the hour the target is set for.**" if results["short"] else ""),
        "",
        "| | value |",
        "|---|---:|",
        f"| alerts produced / read back | {exact['produced']:,} / {exact['received']:,} |",
        f"| not read back / of which still in the input (lag) / lost | "
        f"{exact.get('missing', exact['lost']):,} / {exact.get('pending', 0):,} / "
        f"{exact['lost']:,} |",
        f"| duplicated | {exact['duplicated']:,} |",
        f"| runs succeeded / failed | {results['runs']['succeeded']:,} / "
        f"{results['runs']['failed']:,} |",
        f"| lag, max / p99 of the samples (all partitions) | {lag['max_total']:,.0f} / "
        f"{lag['p99_total']:,.0f} |",
        f"| lag, max of one partition | {lag['max_partition']:,.0f} |",
        f"| lag at the end of the load / after draining | {lag['final_total']:,.0f} / "
        f"{results['lag_after_drain']:,.0f} |",
        f"| processes judged | {_judged(growth)} |",
        f"| peak RSS of the processes that came and went (code servers the daemon replaced "
        f"and their helpers), in order | {_peaks(growth)} |",
        f"| long-lived RSS, first window {first_start / 60:.1f}-{first_end / 60:.1f} min | "
        f"{_mb(growth['first_mb'])} MB |",
        f"| long-lived RSS, last window {last_start / 60:.1f}-{last_end / 60:.1f} min | "
        f"{_mb(growth['last_mb'])} MB |",
        f"| memory growth | {verdict} |",
        f"| run process RSS, median / max of the samples | "
        f"{_mb(results['run_worker_rss_mb']['median'])} / "
        f"{_mb(results['run_worker_rss_mb']['max'])} MB |",
        f"| processes per role, most seen at once | {_most_processes(results['samples'])} |",
        f"| latency p50 / p99 / max (s) | {results['latency']['p50']:.1f} / "
        f"{results['latency']['p99']:.1f} / {results['latency']['max']:.1f} |",
        "",
        "Long-lived RSS per role (mean of the first window → the last): "
        + ", ".join(
            f"{role} {_mb(values['first_mb'])} → {_mb(values['last_mb'])} MB"
            for role, values in growth["roles"].items()
        )
        + ". Run processes live for one run each, so they are reported but not judged on "
        "growth. Windows: the first and last 10 minutes after a warm-up of "
        f"{results['warmup_seconds'] / 60:.1f} min, or half of what follows the warm-up "
        "each when the soak is shorter. Raw samples: `bench/results/soak.json`.",
        *(["", *(f"- {note}" for note in results["notes"])] if results.get("notes") else []),
    ]


def saved_section() -> list[str]:
    """The section from the last soak's saved results (none if no soak ran)."""
    if not SOAK_RESULTS.is_file():
        return []
    return report_section(json.loads(SOAK_RESULTS.read_text()))


def update_benchmarks_report(results: Mapping[str, Any], report: Path = BENCHMARKS) -> None:
    """Put the soak's section at the end of ``docs/benchmarks.md``, replacing an older one
    (``bench.pipeline`` rewrites the rest of the file and appends :func:`saved_section`)."""
    text = report.read_text() if report.is_file() else ""
    kept = text.split(SECTION_HEADING, 1)[0].rstrip()
    section = "\n".join(report_section(results))
    report.write_text((kept + "\n\n" if kept else "") + section + "\n")
