"""What produced a match: the catalog's release, the engine (and the index build), the radius.

Two matches are comparable only when these agree. Every stored ``xmatch`` row and every
catalog of an output message carries them; a match served from the cache keeps those of
the run that found it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: The columns ``xmatch`` keeps them in (and the keys of the output's ``xmatch_provenance``).
PROVENANCE_COLUMNS: Final = ("release", "engine", "index_build", "radius_arcsec")


@dataclass(frozen=True)
class EngineIdentity:
    """``cds``, or ``local`` with the build id of the index that answered."""

    engine: str
    index_build: str | None = None


@dataclass(frozen=True)
class MatchProvenance:
    release: str
    engine: str
    index_build: str | None
    radius_arcsec: float

    @classmethod
    def of(cls, release: str, identity: EngineIdentity, radius_arcsec: float) -> MatchProvenance:
        return cls(release, identity.engine, identity.index_build, float(radius_arcsec))

    def database_values(self) -> dict[str, object]:
        """The provenance columns of an ``xmatch`` row."""
        return {
            "release": self.release,
            "engine": self.engine,
            "index_build": self.index_build,
            "radius_arcsec": self.radius_arcsec,
        }
