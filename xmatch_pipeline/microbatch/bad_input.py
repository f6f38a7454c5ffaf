"""Which failures are the alert's and which the system's: the rule, and the checks before
an alert reaches the crossmatch engine.

**The alert's fault** (whatever its bytes, it must never stop the stream): the message goes
to the dead-letter topic with a ``reason`` header, in the range's own transaction, and the
range commits. An alert is dead-lettered when it is

- *undecodable*: a null value (tombstone), not an Avro container, a writer schema that is
  not a ZTF alert's or not a supported version, data that do not match the schema, a
  string that is not UTF-8 anywhere in the record (``decode``); on an LSST topic, a
  value not in Confluent's wire format (too short, another magic byte), a schema id
  neither the packaged schemas nor the registry know, a record truncated or with bytes
  left over (``decode.lsst_alert``);
- *not on the sky*: ``candidate.ra`` or ``candidate.dec`` NaN or infinite, or ``|dec|`` >
  90. A finite ``ra`` outside [0, 360) names the same direction as ``ra`` mod 360, so it
  is matched there; the alert itself is published unchanged;
- *not identifiable*: an ``objectId`` null, empty or holding a NUL character (it is the
  output's key and the database's object id, which PostgreSQL text cannot hold); an LSST
  alert with no ``diaObjectId`` (neither ``diaSource`` nor ``diaObject`` has one: a
  solar-system source only);
- *not writable*: the enriched alert cannot be encoded with the output schema (the
  writer refuses a value);
- *too large*: the enriched alert does not fit the output topic's ``max.message.bytes``
  (``publish.message_limits``). A dead letter too large for the dead-letter topic is cut
  (``publish.dead_letter``), keeping its reason and origin.

A dead-lettered alert produces no output and no database row.

**The system's fault**: anything that is not one message's content — the crossmatch engine
(CDS down, refusing or answering wrongly, a local index unreadable), PostgreSQL, Kafka
(reading, producing, committing, fencing), the consumer group not at the range's start,
the LSST schema registry not answering within its bounds.
The run fails, nothing of it is visible, and the sensor runs the same range again, up to
``XMATCH_MAX_RUN_ATTEMPTS``; after that the partition waits for an operator.

The position check runs before the engine: one bad position would make the engine refuse
the whole batch, and the range would fail on every attempt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xmatch_pipeline.decode.avro_codec import DecodedAlert, decode_alert
from xmatch_pipeline.decode.errors import AlertDecodeError
from xmatch_pipeline.decode.lsst_alert import LsstAlert, decode_lsst_alert
from xmatch_pipeline.decode.lsst_schemas import LsstSchemaSource
from xmatch_pipeline.publish.dead_letter import DeadLetter
from xmatch_pipeline.read.kafka_range_reader import KafkaRecord
from xmatch_pipeline.survey import Survey

FULL_CIRCLE_DEG = 360.0
POLE_DEG = 90.0


class AlertRejectedError(ValueError):
    """A decoded alert the pipeline cannot process as it is; ``reason`` goes to the header."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PositionOffSkyError(AlertRejectedError):
    """``candidate.ra`` / ``dec`` name no direction on the sky."""


class ObjectIdError(AlertRejectedError):
    """The alert has no ``objectId`` the output and the database can carry."""


def sky_position(ra: float, dec: float) -> tuple[float, float]:
    """``(ra, dec)`` in degrees with ``ra`` in [0, 360), or :class:`PositionOffSkyError`."""
    if not (math.isfinite(ra) and math.isfinite(dec)):
        raise PositionOffSkyError(f"position not finite: ra={ra!r}, dec={dec!r}")
    if abs(dec) > POLE_DEG:
        raise PositionOffSkyError(f"position not on the sky: dec={dec!r} is beyond ±90°")
    if 0.0 <= ra < FULL_CIRCLE_DEG:
        return ra, dec
    wrapped = math.fmod(ra, FULL_CIRCLE_DEG)
    if wrapped < 0.0:
        wrapped += FULL_CIRCLE_DEG
    # fmod is exact; only adding 360 to a tiny negative value can round up to 360 itself.
    return (0.0 if wrapped >= FULL_CIRCLE_DEG else wrapped), dec


def _check_object_id(object_id: object) -> str:
    if not isinstance(object_id, str) or not object_id:
        raise ObjectIdError(f"objectId is {object_id!r}: the output key needs a non-empty id")
    if "\x00" in object_id:
        raise ObjectIdError(f"objectId {object_id!r} holds a NUL character")
    return object_id


@dataclass(frozen=True, slots=True)
class ScreenedAlert:
    """A decoded alert fit to match and publish, with the message it came in."""

    record: KafkaRecord
    alert: DecodedAlert | LsstAlert
    #: The position the engine matches, ``ra`` in [0, 360).
    ra: float
    dec: float

    @property
    def candid(self) -> int:
        return self.alert.candid

    @property
    def object_id(self) -> str:
        return self.alert.object_id


def _screen_lsst(record: KafkaRecord, schemas: LsstSchemaSource) -> ScreenedAlert:
    alert = decode_lsst_alert(
        record.value, schemas, topic=record.topic, partition=record.partition, offset=record.offset
    )
    if alert.dia_object_id is None:
        raise ObjectIdError(
            "no diaObjectId: diaSource.diaObjectId and diaObject are null (a solar-system "
            "source only?); the output key and the database's object id need one"
        )
    ra, dec = sky_position(alert.ra, alert.dec)
    return ScreenedAlert(record, alert, ra, dec)


def screen_record(
    record: KafkaRecord, survey: Survey = "ztf", lsst_schemas: LsstSchemaSource | None = None
) -> ScreenedAlert:
    """Decode one message (header only for ZTF) and check it; raise what makes it the
    alert's fault (:class:`AlertDecodeError` or :class:`AlertRejectedError`)."""
    if survey == "lsst":
        if lsst_schemas is None:
            raise ValueError("an LSST topic needs the LSST schemas (lsst_schemas)")
        return _screen_lsst(record, lsst_schemas)
    alert = decode_alert(
        record.value,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        header_only=True,
    )
    _check_object_id(alert.record.get("objectId"))
    ra, dec = sky_position(alert.ra, alert.dec)
    return ScreenedAlert(record, alert, ra, dec)


def screen_records(
    records: list[KafkaRecord],
    survey: Survey = "ztf",
    lsst_schemas: LsstSchemaSource | None = None,
) -> tuple[list[ScreenedAlert], list[DeadLetter]]:
    """Split a chunk of one survey's topic into alerts to process and dead letters, in input
    order each."""
    alerts: list[ScreenedAlert] = []
    dead_letters: list[DeadLetter] = []
    for record in records:
        try:
            alerts.append(screen_record(record, survey, lsst_schemas))
        except AlertDecodeError as error:
            dead_letters.append(DeadLetter(record, str(error), type(error).__qualname__))
        except AlertRejectedError as error:
            dead_letters.append(DeadLetter(record, error.reason, type(error).__qualname__))
    return alerts, dead_letters
