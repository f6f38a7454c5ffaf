"""``xmatch-pipeline lsst samples | output-schema``: Rubin's sample alerts onto a topic, and
the schema behind an output id (for consumers without a schema registry)."""

from __future__ import annotations

from typing import Annotated

import typer

from xmatch_pipeline.cli.alerts import BootstrapOption, default_bootstrap

app = typer.Typer(
    help="Rubin LSST alerts: replay lsst-alert-packet's samples, print output schemas.",
    no_args_is_help=True,
)

FLUSH_TIMEOUT_SECONDS = 30.0


@app.command("samples")
def samples_command(
    topic: Annotated[str, typer.Option("--topic", "-t", help="Topic to produce to.")],
    bootstrap: BootstrapOption = None,
) -> None:
    """Produce Rubin's sample alert of every schema version, in Rubin's framing, key
    diaObjectId."""
    from confluent_kafka import KafkaError, Message, Producer

    from xmatch_pipeline.devtools.alert_tools.lsst_samples import sample_alerts

    address = bootstrap or default_bootstrap()
    samples = sample_alerts()
    producer = Producer({"bootstrap.servers": address, "enable.idempotence": True})
    failures: list[str] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(str(error))

    for sample in samples:
        producer.produce(topic, sample.value, key=sample.key, on_delivery=delivered)
    left = producer.flush(FLUSH_TIMEOUT_SECONDS)
    if left or failures:
        typer.echo(
            f"lsst samples: {left} not delivered within {FLUSH_TIMEOUT_SECONDS:g} s, "
            f"{len(failures)} refused ({'; '.join(failures[:3])}): check the broker at {address}",
            err=True,
        )
        raise typer.Exit(code=1)
    ids = ", ".join(str(sample.schema_id) for sample in samples)
    typer.echo(f"produced {len(samples)} LSST sample alerts (schema ids {ids}) to {topic}")


@app.command("output-schema")
def output_schema_command(
    output_id: Annotated[int, typer.Argument(help="The schema id of an enriched LSST alert.")],
) -> None:
    """Print the Avro schema of an output id used without a registry (e.g. 1001101: schema
    11.1 with xmatches in double precision)."""
    from xmatch_pipeline.decode.lsst_schemas import PackagedLsstSchemas
    from xmatch_pipeline.publish.lsst_output import output_schema_for_fixed_id

    try:
        schema = output_schema_for_fixed_id(output_id, PackagedLsstSchemas())
    except ValueError as error:  # an AlertDecodeError (unknown input id) is one too
        typer.echo(f"lsst output-schema: {error}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(schema.text.decode("utf-8"))
