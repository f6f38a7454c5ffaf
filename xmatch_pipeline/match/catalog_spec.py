"""What to match against: one catalog, the columns to keep, the radius and the selection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Selection = Literal["best", "all"]

#: CDS caps ``distMaxArcsec`` at 180; the local engine keeps the same limit so that the
#: two engines accept exactly the same requests.
MAX_RADIUS_ARCSEC = 180.0


@dataclass(frozen=True)
class CatalogSpec:
    """A catalog to crossmatch with.

    ``name`` is a short alias (``allwise``) or a VizieR table (``II/328/allwise``) for the CDS
    engine, or the name of a local index (``vizier_table``, when set, is what CDS is asked
    for). ``columns`` are the catalog's columns to return,
    named as CDS names them.
    """

    name: str
    columns: tuple[str, ...]
    radius_arcsec: float = 1.0
    selection: Selection = "best"
    #: The VizieR table CDS is asked for; None: ``name`` is resolved as an alias or a table.
    vizier_table: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("catalog name must not be empty")
        if not 0.0 < self.radius_arcsec <= MAX_RADIUS_ARCSEC:
            raise ValueError(
                f"catalog {self.name!r}: radius_arcsec must be in (0, {MAX_RADIUS_ARCSEC}], "
                f"got {self.radius_arcsec}"
            )
        if self.selection not in ("best", "all"):
            raise ValueError(
                f"catalog {self.name!r}: selection must be 'best' or 'all', got {self.selection!r}"
            )
