"""The local engine on HATS against the index layout it replaced, and against LSDB.

One command::

    .venv/bin/python -m bench.hats_engine [--repeats 3] [--rows 10000000]

The catalog and the ZTF-like batch are ``bench.crossmatch_engines``'s (synthetic, all-sky,
100 k positions in four 47 deg² fields, best match within 1″, about half match). Three
engines, each in a fresh process per repeat, timed from "catalog on disk" to "matches in a
DataFrame" (imports excluded), with peak RSS (``ru_maxrss``):

- ``before``: the engine and index layout of commit ``BASELINE_COMMIT`` (our own
  ``manifest.json`` + ``partitions/``), taken from git (``git archive``) and built with
  that commit's ``catalog build``;
- ``hats``: this engine on the HATS copy written by today's ``catalog build``;
- ``lsdb``: ``lsdb.crossmatch(batch, lsdb.open_catalog(hats copy), n_neighbors=1)``.

For ``before`` and ``hats`` the same process then matches the batch again (warm cache, the
micro-batch case). Results go to ``bench/results/hats_engine.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS_FILE = PROJECT_ROOT / "bench" / "results" / "hats_engine.md"
#: The last commit with the old index layout (the branch point of the HATS change).
BASELINE_COMMIT = "e942c67"
ENGINES = ("before", "hats", "lsdb")
HEADING = "## Local engine on HATS vs the index it replaced, and vs LSDB"
#: Where ``bench.pipeline``'s report puts this file's section (``SIDE_SECTIONS``).
DOCS_HEADING = "## 7b. Local engine on HATS (`bench/hats_engine.py`)"
DOCS_FILE = PROJECT_ROOT / "docs" / "benchmarks.md"
SCENARIO = "ztf_footprint"
RADIUS_ARCSEC = 1.0
COLUMNS = ("source_id", "W1mag", "W2mag", "W3mag", "W4mag")
#: Where each engine's code keeps the index and its build (the layout moved since the baseline).
INDEX_MODULE = {
    "before": "xmatch_pipeline.match.local_index",
    "hats": "xmatch_pipeline.match.local.index",
}
BUILD_MODULE = {
    "before": "xmatch_pipeline.match.catalog_build",
    "hats": "xmatch_pipeline.match.local.build",
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- children: one engine, one batch, a fresh process -------------------------------------------


def run_engine(engine: str, cache_dir: Path) -> dict[str, float]:
    import pyarrow.parquet as pq

    positions = pq.read_table(cache_dir / f"{SCENARIO}.parquet").to_pandas()
    if engine == "lsdb":
        return _run_lsdb(cache_dir, positions)
    import importlib

    import xmatch_pipeline
    from xmatch_pipeline.match.catalog_spec import CatalogSpec

    local_catalog_index = importlib.import_module(INDEX_MODULE[engine]).LocalCatalogIndex

    expected_root = cache_dir / "baseline-src" if engine == "before" else PROJECT_ROOT
    if not Path(xmatch_pipeline.__file__).is_relative_to(expected_root):
        raise RuntimeError(f"{engine}: imported {xmatch_pipeline.__file__}, not {expected_root}")
    spec = CatalogSpec("synthetic", COLUMNS, RADIUS_ARCSEC, "best")
    started = time.perf_counter()
    if engine == "hats":
        # The helper process that reads the metadata with hats (a worker pays it once per
        # catalog, as an import): timed apart, its peak RSS is the children's.
        from xmatch_pipeline.match.local.hats_catalog import open_hats_catalog

        open_hats_catalog(cache_dir / "hats")
    helper_seconds = time.perf_counter() - started
    imported_rss = _peak_rss_mb()
    started = time.perf_counter()
    index = local_catalog_index.open(cache_dir / ("index" if engine == "before" else "hats"))
    matches = index.crossmatch(positions, spec)
    cold = time.perf_counter() - started
    cold_rss = _peak_rss_mb()
    started = time.perf_counter()
    index.crossmatch(positions, spec)
    warm = time.perf_counter() - started
    return {
        "seconds": cold,
        "warm_seconds": warm,
        "matches": float(len(matches)),
        "peak_rss_mb": cold_rss,
        "rss_after_imports_mb": imported_rss,
        "helper_seconds": helper_seconds,
        "helper_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
    }


def _run_lsdb(cache_dir: Path, positions: object) -> dict[str, float]:
    import warnings

    import lsdb

    imported_rss = _peak_rss_mb()
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        catalog = lsdb.open_catalog(cache_dir / "hats", columns=["ra", "dec", *COLUMNS])
        matches = lsdb.crossmatch(
            positions, catalog, ra_column="ra", dec_column="dec",
            radius_arcsec=RADIUS_ARCSEC, n_neighbors=1, suffixes=("", "_cat"),
            suffix_method="overlapping_columns",
        ).compute(progress_bar=False)  # fmt: skip
    elapsed = time.perf_counter() - started
    return {
        "seconds": elapsed,
        "matches": float(len(matches)),
        "peak_rss_mb": _peak_rss_mb(),
        "rss_after_imports_mb": imported_rss,
    }


# --- the parent: data, both builds, the runs ---------------------------------------------------


def baseline_source(cache_dir: Path) -> Path:
    """The baseline commit's ``xmatch_pipeline`` package, unpacked from git once."""
    target = cache_dir / "baseline-src"
    if (target / "xmatch_pipeline" / "match" / "index_manifest.py").exists():
        return target
    with tempfile.TemporaryDirectory() as work:
        archive = Path(work) / "baseline.tar"
        subprocess.run(
            ["git", "archive", "-o", str(archive), BASELINE_COMMIT, "xmatch_pipeline"],
            cwd=PROJECT_ROOT, check=True, timeout=60,
        )  # fmt: skip
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    return target


def _child(arguments: list[str], *, baseline: Path | None, timeout: float) -> str:
    """Run this file as a script (not ``-m``, so the project root is not first on sys.path
    and ``PYTHONPATH`` decides which ``xmatch_pipeline`` the child imports)."""
    environment = dict(os.environ)
    if baseline is not None:
        environment["PYTHONPATH"] = str(baseline)
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *arguments],
        cwd=tempfile.gettempdir(), env=environment, capture_output=True, text=True,
        check=False, timeout=timeout,
    )  # fmt: skip
    if completed.returncode != 0:
        raise RuntimeError(f"{arguments} failed:\n{completed.stderr[-3000:]}")
    return completed.stdout.strip().splitlines()[-1]


def build_both(cache_dir: Path) -> dict[str, float | None]:
    """The baseline index (baseline code) and the HATS copy (today's code), each once."""
    seconds: dict[str, float | None] = {"before": None, "hats": None}
    if not (cache_dir / "index" / "manifest.json").exists():
        seconds["before"] = float(
            _child(
                ["--build", "before", str(cache_dir)],
                baseline=baseline_source(cache_dir),
                timeout=3600,
            )
        )
    if not (cache_dir / "hats" / "properties").exists():
        seconds["hats"] = float(
            _child(["--build", "hats", str(cache_dir)], baseline=None, timeout=3600)
        )
    return seconds


def build(kind: str, cache_dir: Path) -> float:
    import importlib

    build_catalog_index = importlib.import_module(BUILD_MODULE[kind]).build_catalog_index

    started = time.perf_counter()
    build_catalog_index(
        [cache_dir / "catalog.parquet"], cache_dir / ("index" if kind == "before" else "hats"),
        id_column="source_id", ra_column="ra", dec_column="dec", name="synthetic",
    )  # fmt: skip
    return time.perf_counter() - started


def measure(engine: str, cache_dir: Path) -> dict[str, float]:
    baseline = baseline_source(cache_dir) if engine == "before" else None
    line = _child(["--child", engine, str(cache_dir)], baseline=baseline, timeout=1800)
    result: dict[str, float] = json.loads(line)
    return result


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _spread(values: list[float], digits: int = 0) -> str:
    return f"{_median(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def write_report(
    runs: dict[str, list[dict[str, float]]],
    *,
    repeats: int,
    rows: int,
    batch: int,
    builds: dict[str, float | None],
    partitions: str,
    load: str,
) -> str:
    from bench.crossmatch_engines import _machine

    lines = [
        HEADING,
        "",
        f"Generated by `.venv/bin/python -m bench.hats_engine --repeats {repeats}"
        f"{'' if rows == 10_000_000 else f' --rows {rows}'}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"- Machine: {_machine()}. Load average {load} during the runs (1-minute; "
        f"{os.cpu_count()} cores): "
        + (
            "quiet, nothing else measured at the same time."
            if float(load.rsplit("-", maxsplit=1)[-1]) < 1.5
            else "**loaded**: other jobs ran at the same time, so times are upper bounds "
            "and spreads are wide."
        ),
        f"- Catalog: {rows:,} synthetic sources uniform on the sphere "
        "(`bench.crossmatch_engines`'s), "
        f"{partitions} in both layouts. Batch: {batch:,} ZTF-like positions (four 47 deg² "
        "fields), best match within 1″.",
        f"- `before`: commit {BASELINE_COMMIT}'s engine on its own index layout; `hats`: this "
        "engine on the HATS copy `catalog build` writes now; `lsdb`: `lsdb.crossmatch` on "
        "the same HATS copy (n_neighbors=1). One fresh process per engine and repeat; "
        "imports excluded; peak RSS is `ru_maxrss`. Median (min-max). `hats` reads the "
        "catalog's metadata with the hats library in a helper process, once per catalog and "
        "process (so the engine's process never imports hats); that helper runs before the "
        "clock, like an import, and its time and peak RSS are given below the table.",
        "- Builds (once): "
        + ", ".join(
            f"{kind} {'cached' if value is None else f'{value:.0f} s'}"
            for kind, value in builds.items()
        )
        + ".",
        "",
        "| engine | positions/s (cold) | seconds | peak RSS (MB) | warm positions/s | matches |",
        "|---|---|---|---|---|---|",
    ]
    for engine in ENGINES:
        results = runs[engine]
        rates = [batch / result["seconds"] for result in results]
        warm = (
            _spread([batch / result["warm_seconds"] for result in results])
            if "warm_seconds" in results[0]
            else "-"
        )
        lines.append(
            f"| {engine} | {_spread(rates)} | {_spread([r['seconds'] for r in results], 2)} | "
            f"{_spread([r['peak_rss_mb'] for r in results])} | {warm} | "
            f"{int(results[0]['matches']):,} |"
        )
    before, hats, lsdb = (
        {key: _median([r[key] for r in runs[engine]]) for key in ("seconds", "peak_rss_mb")}
        for engine in ENGINES
    )
    speed = before["seconds"] / hats["seconds"]
    memory = hats["peak_rss_mb"] / before["peak_rss_mb"]
    met = speed >= 1.0 and memory <= 1.2
    helper = runs["hats"]
    if "helper_seconds" in helper[0]:
        lines += [
            "",
            "- The metadata helper of `hats` (a process start, `import hats`, the metadata "
            f"read): {_spread([r['helper_seconds'] for r in helper], 2)} s, peak RSS "
            f"{_spread([r['helper_peak_rss_mb'] for r in helper])} MB, gone once it answered.",
        ]
    lines += [
        "",
        "Targets: HATS no slower than before, peak memory ≤ 1.2x.",
        "",
        f"- hats vs before: {speed:.2f}x the throughput, {memory:.2f}x the peak memory — "
        f"{'targets met' if met else 'target missed'}.",
        f"- hats vs lsdb: {lsdb['seconds'] / hats['seconds']:.1f}x LSDB's throughput, "
        f"{hats['peak_rss_mb'] / lsdb['peak_rss_mb']:.2f}x its peak memory.",
        "- Matches agree: "
        + ", ".join(f"{engine} {int(runs[engine][0]['matches']):,}" for engine in ENGINES)
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "CACHE_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--build", nargs=2, metavar=("KIND", "CACHE_DIR"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        engine, cache = arguments.child
        print(json.dumps(run_engine(engine, Path(cache))))
        return
    if arguments.build:
        kind, cache = arguments.build
        print(build(kind, Path(cache)))
        return

    sys.path.insert(0, str(PROJECT_ROOT))
    from bench import crossmatch_engines

    crossmatch_engines.CATALOG_ROWS = arguments.rows
    cache_dir = arguments.cache_dir or (
        crossmatch_engines.CACHE_DIR
        if arguments.rows == 10_000_000
        else crossmatch_engines.CACHE_DIR.with_name(f"crossmatch-{arguments.rows}")
    )
    print(f"data in {cache_dir} (generated once)", flush=True)
    crossmatch_engines.generate_data(cache_dir)
    builds = build_both(cache_dir)
    print(f"builds: {builds}", flush=True)
    loads: list[float] = []
    runs: dict[str, list[dict[str, float]]] = {}
    for repeat in range(arguments.repeats):
        for engine in ENGINES:
            loads.append(os.getloadavg()[0])
            result = measure(engine, cache_dir)
            runs.setdefault(engine, []).append(result)
            print(
                f"repeat {repeat + 1}: {engine:7s} "
                f"{crossmatch_engines.BATCH_SIZE / result['seconds']:>10,.0f}"
                f" positions/s {result['seconds']:6.2f} s peak {result['peak_rss_mb']:6.0f} MB",
                flush=True,
            )
    report = write_report(
        runs,
        repeats=arguments.repeats,
        rows=arguments.rows,
        batch=crossmatch_engines.BATCH_SIZE,
        builds=builds,
        partitions=crossmatch_engines.hats_partitions_text(cache_dir / "hats"),
        load=f"{min(loads):.1f}-{max(loads):.1f}",
    )
    RESULTS_FILE.write_text(report)
    write_docs_section(report)
    print(report)


def write_docs_section(report: str) -> None:
    """This section in docs/benchmarks.md, before the workers' section; nothing else moves."""
    from bench.workers import SECTION_START

    section = report.replace(HEADING, DOCS_HEADING, 1).rstrip() + "\n\n"
    text = DOCS_FILE.read_text()
    if DOCS_HEADING in text:
        start = text.index(DOCS_HEADING)
        # The next section: a heading, or another benchmark's start marker before one.
        following = [i for i in (text.find("\n## ", start + 1), text.find("\n<!-- ", start))
                     if i != -1]  # fmt: skip
        end = min(following) + 1 if following else len(text)
        text = text[:start] + section + text[end:].lstrip("\n")
    elif SECTION_START in text:
        at = text.index(SECTION_START)
        text = text[:at] + section + text[at:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOCS_FILE.write_text(text)


if __name__ == "__main__":
    main()
