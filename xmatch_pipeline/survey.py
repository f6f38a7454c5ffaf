"""Which survey's alerts a topic carries: a setting per topic, never a guess from its name.

ZTF publishes Avro container files (schema embedded); Rubin publishes the Confluent wire
format (a magic byte, a schema id, the record). A deployment reads ZTF topics, LSST topics
or both: ``XMATCH_SURVEY`` is the survey of every input topic, and ``XMATCH_TOPIC_SURVEYS``
names exceptions, ``regex=survey`` pairs matched against the whole topic name, first match
wins. A run covers one partition of one topic, so it decodes, keys and stores one survey.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

Survey = Literal["ztf", "lsst"]
SURVEYS: Final[tuple[Survey, ...]] = ("ztf", "lsst")


def as_survey(text: str) -> Survey:
    """``text`` as a survey name, or a ValueError naming the surveys this pipeline reads."""
    for survey in SURVEYS:
        if text == survey:
            return survey
    raise ValueError(f"unknown survey {text!r} (expected one of {', '.join(SURVEYS)})")


@dataclass(frozen=True)
class TopicSurveys:
    """The survey of every input topic: ``default``, unless a rule's pattern matches it."""

    default: Survey = "ztf"
    #: ``(pattern, survey)`` in the order given; a pattern must match the whole topic name.
    rules: tuple[tuple[str, Survey], ...] = ()

    def names(self, survey: Survey) -> bool:
        """Whether some topic may be of ``survey`` (its default, or a rule's)."""
        return self.default == survey or any(named == survey for _, named in self.rules)

    def survey_of(self, topic: str) -> Survey:
        for pattern, survey in self.rules:
            if re.fullmatch(pattern, topic):
                return survey
        return self.default

    @classmethod
    def parse(cls, default: str, rules_text: str | None) -> TopicSurveys:
        """From ``XMATCH_SURVEY`` and ``XMATCH_TOPIC_SURVEYS`` (``regex=survey,…``)."""
        rules: list[tuple[str, Survey]] = []
        for part in (rules_text or "").split(","):
            if not part.strip():
                continue
            pattern, separator, survey = part.strip().rpartition("=")
            if not separator or not pattern:
                raise ValueError(
                    f"{part.strip()!r} is not regex=survey (e.g. 'lsst-alerts.*=lsst')"
                )
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"{pattern!r} is not a regular expression: {error}") from None
            rules.append((pattern, as_survey(survey.strip())))
        return cls(default=as_survey(default), rules=tuple(rules))
