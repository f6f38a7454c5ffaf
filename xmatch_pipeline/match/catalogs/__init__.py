"""The registered catalogs: every module of this package that declares ``CATALOG``.

Adding a catalog is adding a module here (see ``gaia_dr3.py``) and an entry in
``XMATCH_CATALOGS``; the registry finds the module by itself. Names resolve
case-insensitively through the name, the aliases and the VizieR table.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from xmatch_pipeline.match.catalog_definition import CatalogDefinition


@cache
def registered_catalogs() -> tuple[CatalogDefinition, ...]:
    """Every catalog module's ``CATALOG``, in module name order."""
    found: list[CatalogDefinition] = []
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        definition = getattr(module, "CATALOG", None)
        if isinstance(definition, CatalogDefinition):
            found.append(definition)
    _refuse_clashing_names(found)
    return tuple(found)


def _refuse_clashing_names(definitions: list[CatalogDefinition]) -> None:
    owner: dict[str, str] = {}
    for definition in definitions:
        for spelling in definition.names:
            if owner.setdefault(spelling, definition.name) != definition.name:
                raise ValueError(
                    f"catalog modules {owner[spelling]!r} and {definition.name!r} both "
                    f"answer to {spelling!r}: give each catalog its own names"
                )


def find_catalog(name: str) -> CatalogDefinition | None:
    """The registered catalog a name, alias or VizieR table (``vizier:`` allowed) names."""
    spelling = name.strip().lower().removeprefix("vizier:")
    for definition in registered_catalogs():
        if spelling in definition.names:
            return definition
    return None
