"""The soak's judgements on plain values: lost and duplicated alerts, the memory windows,
and which process plays which role (``bench.soak``)."""

from __future__ import annotations

from bench.soak.processes import role_of
from bench.soak.summary import comparison_windows, exactness, lag_statistics, memory_growth


def test_exactness_counts_lost_and_duplicated_alerts_per_key_even_when_keys_repeat() -> None:
    produced = {"ZTF1": 2, "ZTF2": 1, "ZTF3": 1}
    assert exactness(produced, ["ZTF1", "ZTF2", "ZTF1", "ZTF3"]) == {
        "produced": 4,
        "received": 4,
        "missing": 0,
        "pending": 0,
        "lost": 0,
        "duplicated": 0,
    }
    # ZTF1 once too few, ZTF2 once too many, an unknown key: all counted.
    assert exactness(produced, ["ZTF1", "ZTF2", "ZTF2", "ZTF3", "ZTF9"]) == {
        "produced": 4,
        "received": 5,
        "missing": 1,
        "pending": 0,
        "lost": 1,
        "duplicated": 2,
    }
    # Still waiting in the input is missing, not lost.
    assert exactness(produced, ["ZTF1"], pending=3)["lost"] == 0


def test_memory_windows_are_ten_minutes_after_the_warmup_or_half_a_short_soak() -> None:
    assert comparison_windows(3600, 300) == ((300, 900), (3000, 3600))
    assert comparison_windows(300, 60) == ((60, 180), (180, 300))


def test_memory_growth_compares_long_lived_processes_only() -> None:
    def sample(elapsed: float, daemon_mb: int, runs_mb: int) -> dict[str, object]:
        rss = {"daemon": daemon_mb * 10**6, "run_worker": runs_mb * 10**6}
        return {"elapsed": elapsed, "rss_by_role": rss}

    samples = [sample(t, 100, 700) for t in (0, 10, 20)] + [sample(t, 115, 50) for t in (30, 40)]
    growth = memory_growth(samples, load_seconds=40, warmup_seconds=10)
    assert growth["first_window"] == (10, 25)
    assert round(growth["growth"], 3) == 0.15  # run processes' 700 → 50 MB is ignored
    assert growth["roles"]["daemon"] == {"first_mb": 100.0, "last_mb": 115.0}


def test_lag_statistics_over_samples_total_and_per_partition() -> None:
    samples = [{"lag": {"0": lag, "1": 2 * lag}} for lag in (0, 10, 30, 5)]
    stats = lag_statistics(samples)
    assert (stats["max_total"], stats["max_partition"], stats["final_total"]) == (90, 60, 15)


def test_process_roles_follow_the_command_line() -> None:
    assert role_of("python /venv/bin/dagster-daemon run -w workspace.yaml") == "daemon"
    assert role_of("python -m dagster api grpc --lazy-load-user-code --socket /tmp/x") == (
        "code_server"
    )
    assert role_of("python -B -c from multiprocessing.spawn import spawn_main; spawn_main()") == (
        "run_worker"
    )
    assert role_of("celery -A xmatch_pipeline.worker worker") == "celery_worker"
    assert role_of("tail -F -c +0 /tmp/compute_logs/x.out") == "run_worker"
    assert role_of("/usr/bin/something") == "other"


def test_memory_growth_follows_the_processes_alive_throughout_when_samples_name_them() -> None:
    def sample(elapsed: float, transient_mb: int | None) -> dict[str, object]:
        by_pid = {"10": 150 * 10**6, "11": 500 * 10**6}
        if transient_mb is not None:
            by_pid["99"] = transient_mb * 10**6  # a short-lived gRPC server
        code_server = sum(v for k, v in by_pid.items() if k != "10")
        return {
            "elapsed": elapsed,
            "rss_by_role": {"daemon": 150 * 10**6, "code_server": code_server},
            "rss_by_pid": by_pid,
        }

    samples = [sample(0, None), sample(10, None), sample(20, None), sample(30, 300)]
    growth = memory_growth(samples, load_seconds=30, warmup_seconds=0)
    assert growth["persistent_processes"] == 2
    assert growth["growth"] == 0.0  # the transient server's 300 MB is not growth
