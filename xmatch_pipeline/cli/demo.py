"""``xmatch-pipeline demo``: the whole pipeline on this machine, with the Dagster UI.

Starts the devstack, builds the demo catalog and alerts, replays the alerts into an input
topic, serves the catalog over the CDS protocol (so the demo uses the same CDS client as
production), starts a run worker (``xmatch-pipeline worker``: runs execute in its warm pool
processes, as in production) and runs ``dg dev`` (Dagster's UI and daemon) with the lag sensor on.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

DEMO_INPUT_TOPIC = "ztf_20200101_programid1"
DEMO_GROUP = "xmatch-demo"
DEMO_OUTPUT_TOPIC = "xmatch"


def _wait_for_port(host: str, port: int, seconds: float) -> bool:
    import socket

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.2)
    return False


def _input_topic_messages(bootstrap: str, topic: str) -> int:
    from xmatch_pipeline.kafka.client_config import KafkaClientConfig
    from xmatch_pipeline.read.kafka_offsets import KafkaOffsetsReader

    reader = KafkaOffsetsReader(KafkaClientConfig(bootstrap), DEMO_GROUP)
    if topic not in reader.list_topics():
        return 0
    return sum(lag.high - lag.low for lag in reader.lags([topic]))


def _start_dg_dev(
    project_files: Path, port: int, environment: dict[str, str]
) -> subprocess.Popen[bytes]:
    """``dg dev`` (Dagster's current CLI), which finds the code location in pyproject.toml's
    ``[tool.dg]``; DAGSTER_HOME keeps the instance (dagster.yaml) under .devstack, and
    VIRTUAL_ENV names the project's venv so that dg uses it without a warning."""
    return subprocess.Popen(
        [
            str(Path(sys.executable).with_name("dg")), "dev",
            "--target-path", str(project_files),
            "--host", "127.0.0.1", "--port", str(port),
        ],
        env={**environment, "VIRTUAL_ENV": sys.prefix},
        cwd=project_files,
    )  # fmt: skip


def demo_command(
    alerts: Annotated[int, typer.Option("--alerts", min=1, help="Sample alerts to replay.")] = 2000,
    port: Annotated[int, typer.Option("--port", help="Port of the Dagster UI.")] = 3000,
    cds_port: Annotated[int, typer.Option("--cds-port", help="Port of the local CDS.")] = 18123,
    engine: Annotated[
        str, typer.Option("--engine", help="cds (local cds-server, as production) or local.")
    ] = "cds",
) -> None:
    """Run the pipeline locally on sample alerts, with the Dagster UI on --port."""
    from xmatch_pipeline.devtools.alert_tools.replay import replay_alerts
    from xmatch_pipeline.devtools.demo import prepare_demo_data
    from xmatch_pipeline.devtools.devstack import DevstackError, ensure_devstack_running

    if engine not in ("cds", "local"):
        raise typer.BadParameter("--engine must be cds or local")
    try:
        devstack = ensure_devstack_running()
    except DevstackError as error:
        typer.echo(f"demo: {error}", err=True)
        raise typer.Exit(code=2) from None
    demo_dir = devstack.devstack_dir / "demo"
    typer.echo(f"demo: preparing the catalog and {alerts} alerts in {demo_dir}")
    data = prepare_demo_data(demo_dir, alerts)

    present = _input_topic_messages(devstack.kafka_bootstrap_servers, DEMO_INPUT_TOPIC)
    if present >= alerts:
        typer.echo(f"demo: {DEMO_INPUT_TOPIC} already holds {present} alerts; not replaying")
    else:
        report = replay_alerts(
            [data.alerts_dir], DEMO_INPUT_TOPIC, devstack.kafka_bootstrap_servers, partitions=2
        )
        typer.echo(f"demo: replayed {report.delivered} alerts to {DEMO_INPUT_TOPIC}")

    dagster_home = devstack.devstack_dir / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    project_files = Path(__file__).resolve().parents[2]
    shutil.copyfile(project_files / "dagster.yaml", dagster_home / "dagster.yaml")

    environment = {
        **os.environ,
        **devstack.as_environment(),
        "DAGSTER_HOME": str(dagster_home),
        "CONSUMER_TOPICS": DEMO_INPUT_TOPIC,
        "CONSUMER_GROUP_ID": DEMO_GROUP,
        "PRODUCER_TOPIC": DEMO_OUTPUT_TOPIC,
        "XMATCH_ENGINE": engine,
        "XMATCH_LOCAL_CATALOGS": f"allwise={data.catalog_index}",
        "XMATCH_SENSOR_INTERVAL_SECONDS": "5",
        "XMATCH_MAX_MESSAGES_PER_RUN": "500",
        "STEP_VERSION": "demo",
    }
    environment.pop("PRODUCER_SERVER", None)
    children: list[subprocess.Popen[bytes]] = []
    if engine == "cds":
        cds_url = f"http://127.0.0.1:{cds_port}/xmatch/api/v1/sync"
        environment["XMATCH_CDS_URL"] = cds_url
        children.append(
            subprocess.Popen(
                [
                    sys.executable, "-m", "xmatch_pipeline.cli.main", "cds-server",
                    "--catalog", f"allwise={data.catalog_index}", "--port", str(cds_port),
                ],
                env=environment,
            )
        )  # fmt: skip
        if not _wait_for_port("127.0.0.1", cds_port, 120):  # slow on a loaded machine
            typer.echo(f"demo: cds-server did not start on port {cds_port}", err=True)
            raise typer.Exit(code=2)
    children.append(
        subprocess.Popen(
            [sys.executable, "-m", "xmatch_pipeline.cli.main", "worker", "--concurrency", "2"],
            env=environment,
            cwd=dagster_home,
        )
    )
    typer.echo(
        "\n".join(
            [
                "",
                f"demo: Dagster UI on http://127.0.0.1:{port} (Ctrl-C stops the demo)",
                "demo: kafka_lag_sensor is on; runs appear under Runs within a minute and run in "
                "the worker started beside dg dev",
                "demo: look at the results with",
                f"  .venv/bin/xmatch-pipeline alerts tail --topic {DEMO_OUTPUT_TOPIC} --count 3",
                f"  PGPASSWORD={devstack.postgres_password} psql -h {devstack.postgres_host} "
                f"-p {devstack.postgres_port} -U {devstack.postgres_user} "
                f"{devstack.postgres_database} -c 'SELECT * FROM xmatch LIMIT 5'",
                "",
            ]
        )
    )
    dagster = _start_dg_dev(project_files, port, environment)
    children.append(dagster)
    try:
        dagster.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGINT if child is dagster else signal.SIGTERM)
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.kill()
