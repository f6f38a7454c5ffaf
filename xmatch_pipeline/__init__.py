"""Crossmatch stage of an alert broker.

The flow of one alert is the package layout: ``read`` → ``decode`` → ``match`` → ``store``
→ ``publish`` (which also commits the input offsets). ``orchestration`` is the thin Dagster
layer on top; ``devstack`` starts the local Kafka and PostgreSQL; ``cli`` is the
``xmatch-pipeline`` command.
"""

__version__ = "0.1.0"
