"""``XMATCH_CATALOGS``: which catalogs to match, with which columns, radius and selection.

Each entry names a registered catalog (``match/catalogs/``) by name, alias or VizieR
table, or declares an output-only catalog itself (``vizier_table``, ``release``,
``id_column``, ``columns``: no module needed). Every mistake is reported with the entry
and the field at fault and what it should be, so a bad entry stops the load, not a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from xmatch_pipeline.match.catalog_definition import CatalogColumn, CatalogDefinition
from xmatch_pipeline.match.catalog_spec import MAX_RADIUS_ARCSEC, CatalogSpec, Selection
from xmatch_pipeline.match.catalogs import find_catalog, registered_catalogs

SETTING = "XMATCH_CATALOGS"
#: Up to this many matches per catalog for ``selection: "all"`` when ``max_matches`` is unset.
DEFAULT_MAX_MATCHES = 10
_ENTRY_FIELDS = frozenset({"name", "columns", "radius_arcsec", "selection", "max_matches"})
_DECLARATION_FIELDS = frozenset({"vizier_table", "release", "id_column", "ra_column", "dec_column"})


class CatalogConfigurationError(ValueError):
    """Entries of XMATCH_CATALOGS are wrong; ``problems`` holds one message each."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True)
class ConfiguredCatalog:
    """A catalog as this deployment matches it."""

    definition: CatalogDefinition
    #: The columns the output message carries, in this order.
    output_columns: tuple[str, ...]
    radius_arcsec: float
    selection: Selection = "best"
    #: Matches per alert in the output (1 for ``best``); the database keeps the nearest.
    max_matches: int = 1

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def stored(self) -> bool:
        return self.definition.table is not None

    @property
    def spec(self) -> CatalogSpec:
        """What the engine is asked: the output columns plus those its table stores."""
        stored = [column.name for column in self.definition.stored_columns]
        columns = tuple(dict.fromkeys([*self.output_columns, *stored]))
        return CatalogSpec(
            name=self.name,
            columns=columns,
            radius_arcsec=self.radius_arcsec,
            selection=self.selection,
            vizier_table=self.definition.vizier_table,
        )


def default_catalog(definition: CatalogDefinition) -> ConfiguredCatalog:
    """A registered catalog with its default columns and radius, nearest match only."""
    return ConfiguredCatalog(
        definition,
        definition.default_columns or definition.column_names,
        definition.default_radius_arcsec,
    )


def configured_catalogs(entries: object) -> tuple[ConfiguredCatalog, ...]:
    """Every entry of the parsed JSON array, or :class:`CatalogConfigurationError`."""
    if not isinstance(entries, list) or not entries:
        raise CatalogConfigurationError(
            [f"{SETTING} must be a non-empty JSON array of catalog entries"]
        )
    problems: list[str] = []
    catalogs: list[ConfiguredCatalog] = []
    for index, entry in enumerate(entries):
        try:
            catalogs.append(_entry(entry, f"{SETTING}[{index}]"))
        except CatalogConfigurationError as error:
            problems.extend(error.problems)
    seen: dict[str, int] = {}
    for index, catalog in enumerate(catalogs):
        if catalog.name in seen:
            problems.append(
                f"{SETTING}[{index}] names catalog {catalog.name!r} again (entry "
                f"{seen[catalog.name]} already does): each catalog must appear once"
            )
        seen.setdefault(catalog.name, index)
    if problems:
        raise CatalogConfigurationError(problems)
    return tuple(catalogs)


def _entry(entry: object, where: str) -> ConfiguredCatalog:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise CatalogConfigurationError(
            [f"{where} must be an object with at least 'name' (a catalog, e.g. \"allwise\")"]
        )
    name: str = entry["name"]
    where = f"{where} ({name})"
    problems: list[str] = []
    unknown_fields = set(entry) - _ENTRY_FIELDS - _DECLARATION_FIELDS
    if unknown_fields:
        problems.append(
            f"{where} has unknown field(s) {sorted(unknown_fields)}; the fields are "
            f"{sorted(_ENTRY_FIELDS | _DECLARATION_FIELDS)}"
        )
    definition = _definition(entry, name, where, problems)
    columns = _columns(entry, definition, where, problems)
    radius = _radius(entry, definition, where, problems)
    selection, max_matches = _selection(entry, where, problems)
    if problems or definition is None:
        raise CatalogConfigurationError(problems)
    return ConfiguredCatalog(definition, columns, radius, selection, max_matches)


def _definition(
    entry: dict[str, Any], name: str, where: str, problems: list[str]
) -> CatalogDefinition | None:
    declared = sorted(set(entry) & _DECLARATION_FIELDS)
    registered = find_catalog(name)
    if registered is not None:
        if declared:
            problems.append(
                f"{where}: {name!r} is the registered catalog {registered.name!r}, whose module "
                f"declares it; remove {declared} or choose another name"
            )
        return registered
    if not declared:
        known = ", ".join(sorted(definition.name for definition in registered_catalogs()))
        problems.append(
            f"{where}.name: unknown catalog {name!r}; it should be one of {known} (or their "
            "aliases or VizieR tables), or declare an output-only catalog with "
            "'vizier_table', 'release', 'id_column' and 'columns'"
        )
        return None
    missing = [field for field in ("vizier_table", "release", "id_column") if field not in entry]
    columns = entry.get("columns")
    if missing or not isinstance(columns, list) or not columns:
        problems.append(
            f"{where}: a catalog declared here needs 'vizier_table', 'release', 'id_column' "
            f"and a non-empty 'columns' list (missing {missing or ['columns']})"
        )
        return None
    id_column = str(entry["id_column"])
    ra_column = str(entry.get("ra_column", "RAJ2000"))
    dec_column = str(entry.get("dec_column", "DEJ2000"))
    names = [str(column) for column in columns]
    for role, column in (
        ("id_column", id_column),
        ("ra_column", ra_column),
        ("dec_column", dec_column),
    ):
        if column not in names:
            problems.append(f"{where}.{role}: {column!r} should be one of its 'columns' {names}")
    if problems:
        return None
    return CatalogDefinition(
        name=name,
        vizier_table=str(entry["vizier_table"]),
        release=str(entry["release"]),
        id_column=id_column,
        ra_column=ra_column,
        dec_column=dec_column,
        columns=tuple(CatalogColumn(column) for column in dict.fromkeys(names)),
        default_radius_arcsec=1.0,
    )


def _columns(
    entry: dict[str, Any],
    definition: CatalogDefinition | None,
    where: str,
    problems: list[str],
) -> tuple[str, ...]:
    if definition is None:
        return ()
    raw = entry.get("columns")
    if raw is None:
        return definition.default_columns or definition.column_names
    if not isinstance(raw, list) or not raw or not all(isinstance(c, str) for c in raw):
        problems.append(f"{where}.columns should be a non-empty list of column names")
        return ()
    unknown = [column for column in raw if column not in definition.column_names]
    if unknown:
        problems.append(
            f"{where}.columns: catalog {definition.name!r} has no column(s) {unknown}; "
            f"they should be among {list(definition.column_names)}"
        )
    if len(set(raw)) != len(raw) or {"angDist", "id"} & set(raw):
        problems.append(f"{where}.columns should name each column once, and not angDist or id")
    return tuple(raw)


def _radius(
    entry: dict[str, Any], definition: CatalogDefinition | None, where: str, problems: list[str]
) -> float:
    default = definition.default_radius_arcsec if definition is not None else 1.0
    raw = entry.get("radius_arcsec", default)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        problems.append(f"{where}.radius_arcsec should be a number of arcsec, got {raw!r}")
        return default
    radius = float(raw)
    if not 0.0 < radius <= MAX_RADIUS_ARCSEC:
        problems.append(
            f"{where}.radius_arcsec should be in (0, {MAX_RADIUS_ARCSEC:g}] arcsec (CDS's "
            f"limit), got {raw}"
        )
    return radius


def _selection(entry: dict[str, Any], where: str, problems: list[str]) -> tuple[Selection, int]:
    selection = entry.get("selection", "best")
    if selection not in ("best", "all"):
        problems.append(f"{where}.selection should be 'best' or 'all', got {selection!r}")
        return "best", 1
    raw = entry.get("max_matches")
    if raw is None:
        return selection, (1 if selection == "best" else DEFAULT_MAX_MATCHES)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        problems.append(f"{where}.max_matches should be an integer of at least 1, got {raw!r}")
        return selection, 1
    if selection == "best" and raw != 1:
        problems.append(
            f"{where}.max_matches is {raw} but selection is 'best' (one match): set "
            "selection to 'all' for up to max_matches matches"
        )
    return selection, raw
