"""``xmatch-pipeline alerts inspect | replay | generate``: alert packets for operators and tests."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="ZTF alert packets (.avro files, folders, nightly .tar.gz): inspect, replay, generate.",
    no_args_is_help=True,
)

PathsArgument = Annotated[
    list[Path],
    typer.Argument(help=".avro files, folders of them (searched recursively) or .tar.gz archives."),
]
BootstrapOption = Annotated[
    str | None,
    typer.Option(
        "--bootstrap",
        "-b",
        help="Kafka bootstrap (default: $KAFKA_BOOTSTRAP_SERVERS, else the devstack's).",
    ),
]


@app.command("inspect")
def inspect_command(paths: PathsArgument) -> None:
    """One JSON line per alert: objectId, candid, ra, dec, schemavsn; exit 1 if any unreadable."""
    from xmatch_pipeline.decode import AlertDecodeError, decode_alert
    from xmatch_pipeline.devtools.alert_tools.summary import summary_json_line
    from xmatch_pipeline.read.alert_files import AlertFileError, expand_alert_paths, read_alert_file

    try:
        files = expand_alert_paths(paths)
    except AlertFileError as error:
        typer.echo(f"alerts inspect: {error}", err=True)
        raise typer.Exit(code=2) from None
    problems = 0
    for path in files:
        try:
            for packet in read_alert_file(path):
                try:
                    alert = decode_alert(packet.data, source=packet.source)
                except AlertDecodeError as error:
                    problems += 1
                    typer.echo(f"alerts inspect: skipped {error}", err=True)
                    continue
                typer.echo(summary_json_line(alert))
        except AlertFileError as error:
            problems += 1
            typer.echo(f"alerts inspect: skipped {error}", err=True)
    if problems:
        raise typer.Exit(code=1)


def default_bootstrap() -> str:
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        return configured
    from xmatch_pipeline.devtools.devstack import devstack_settings

    return devstack_settings().kafka_bootstrap_servers


@app.command("replay")
def replay_command(
    paths: PathsArgument,
    topic: Annotated[str, typer.Option("--topic", "-t", help="Topic to produce to.")],
    bootstrap: BootstrapOption = None,
    partitions: Annotated[
        int, typer.Option(min=1, help="Partitions if the topic has to be created.")
    ] = 1,
) -> None:
    """Produce the alerts, bytes unchanged, key objectId; corrupt inputs are skipped and listed."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from xmatch_pipeline.devtools.alert_tools.replay import (
        BrokerUnreachableError,
        count_alert_inputs,
        replay_alerts,
    )
    from xmatch_pipeline.read.alert_files import AlertFileError

    address = bootstrap or default_bootstrap()
    console = Console(stderr=True)
    started = time.monotonic()
    try:
        total = count_alert_inputs(paths)
        progress = Progress(
            TextColumn(f"replay to {topic}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        task = progress.add_task("replay", total=total)
        try:
            report = replay_alerts(
                paths,
                topic,
                address,
                partitions=partitions,
                on_connected=progress.start,
                on_delivered=lambda: progress.advance(task),
            )
        finally:
            progress.stop()
    except (AlertFileError, BrokerUnreachableError) as error:
        typer.echo(f"alerts replay: {error}", err=True)
        raise typer.Exit(code=2) from None
    if report.topic_created:
        console.print(f"created topic {topic} on {address}")
    for skipped in report.skipped:
        console.print(f"skipped {skipped.source}: {skipped.reason}", markup=False)
    for failed in report.failed:
        console.print(f"FAILED {failed.source}: {failed.reason}", markup=False)
    console.print(
        f"produced {report.delivered} alerts to {topic} on {address} in "
        f"{time.monotonic() - started:.1f} s; skipped {len(report.skipped)}, "
        f"delivery failed {len(report.failed)}",
        markup=False,
    )
    if report.failed:
        raise typer.Exit(code=1)


@app.command("generate")
def generate_command(
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="How many alerts.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write <candid>.avro into.")],
    positions: Annotated[
        Path | None,
        typer.Option(help="CSV with ra,dec columns (degrees); default: spread like ZTF fields."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
) -> None:
    """Write synthetic alerts valid against ZTF schema 3.3, one Avro container per alert."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from xmatch_pipeline.devtools.alert_tools.synthetic import (
        PositionsFileError,
        read_positions_csv,
        write_synthetic_alerts,
    )

    try:
        coordinates = read_positions_csv(positions) if positions is not None else None
    except PositionsFileError as error:
        typer.echo(f"alerts generate: {error}", err=True)
        raise typer.Exit(code=2) from None
    console = Console(stderr=True)
    sizes: list[int] = []
    try:
        with Progress(
            TextColumn("generate"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("generate", total=count)

            def on_written(size: int) -> None:
                sizes.append(size)
                progress.advance(task)

            write_synthetic_alerts(
                out, count, seed=seed, positions=coordinates, on_written=on_written
            )
    except OSError as error:
        typer.echo(f"alerts generate: cannot write into {out}: {error}", err=True)
        raise typer.Exit(code=2) from None
    total = sum(sizes)
    console.print(
        f"wrote {count} alerts ({total / 1e6:.1f} MB, {total / count / 1e3:.1f} kB each) to {out}",
        markup=False,
    )


@app.command("tail")
def tail_command(
    topic: Annotated[str, typer.Option("--topic", help="Topic to read, e.g. xmatch.")],
    count: Annotated[int, typer.Option("--count", min=1, help="How many messages.")] = 5,
    bootstrap: Annotated[
        str | None,
        typer.Option("--bootstrap", help="Kafka bootstrap servers (default: the devstack's)."),
    ] = None,
) -> None:
    """Print the first committed alerts of a topic (read_committed): ids and xmatches."""
    from confluent_kafka import KafkaException

    from xmatch_pipeline.devtools.alert_tools.tail import tail_lines

    try:
        for line in tail_lines(bootstrap or default_bootstrap(), topic, count):
            typer.echo(line)
    except KafkaException as error:
        typer.echo(f"alerts tail: cannot read {topic}: {error}", err=True)
        raise typer.Exit(code=2) from None
