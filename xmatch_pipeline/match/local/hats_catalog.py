"""A HATS catalog on disk as the local engine reads it: its properties, partitions and schema.

HATS is the field's layout for large catalogs (ALLWISE and Gaia DR3 are published in it):
one Parquet file per HEALPix pixel, of varying order (``dataset/Norder=K/Dir=D/Npix=N.parquet``),
a ``properties`` file that names the catalog and its coordinate columns, and
``partition_info.csv`` (or ``dataset/_metadata``) listing the pixels. The ``hats`` library
reads that metadata; the partitions a batch touches are then read with pyarrow from the
paths hats gives, which costs less per file than hats' pandas reader. A collection
(``collection.properties``) is opened at its main catalog, with its default margin cache
when it has one: per partition, the rows of the neighbouring partitions within the margin's
threshold of it, so a position near an edge reads its own partition and that partition's
margin instead of two to four whole partitions.

The ``hats`` library is imported only in a short-lived helper process that reads the
metadata and hands it back (pickled; it is our own code on both ends): importing it brings
numba, mocpy and matplotlib along, ~117 MB of RSS that every long-lived worker process would
otherwise carry for the rest of its life, for metadata read once. The helper costs a process
start and hats' import (~2 s) once per catalog and process; the answer is kept while the
catalog's metadata files are unchanged. A process that has imported hats already reads the
metadata itself.

A directory that is not a HATS catalog, or whose partitions cannot be listed, raises
``HatsFormatError`` naming what is missing, so a wrong ``XMATCH_LOCAL_CATALOGS`` stops the
load instead of every run.
"""

from __future__ import annotations

import functools
import os
import pickle
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

#: The spatial index column HATS writes into every row (nested pixel at order 29).
SPATIAL_INDEX_COLUMN = "_healpix_29"
#: A property of our own, written by ``catalog build``: the column ``best`` breaks ties on.
ID_COLUMN_PROPERTY = "xmatch_col_id"
PROPERTIES_FILE = "properties"
PARTITION_INFO_FILE = "partition_info.csv"
#: The files whose change means the metadata must be read again.
METADATA_FILES = (
    PROPERTIES_FILE,
    "hats.properties",
    "collection.properties",
    PARTITION_INFO_FILE,
    "dataset/_metadata",
    "dataset/_common_metadata",
)
#: How long the helper may take to read a catalog's metadata (hats' import included).
METADATA_READ_TIMEOUT_SECONDS = 300.0
#: The helper's exit status for "not a usable HATS catalog" (its message is on stderr).
FORMAT_ERROR_STATUS = 3
HELPER_MODULE = "xmatch_pipeline.match.local.hats_helper"


class HatsFormatError(ValueError):
    """A directory is not a HATS catalog the local engine can read; the message says why."""


@dataclass(frozen=True, eq=False)
class HatsMargin:
    """A catalog's margin cache: for each partition, the rows of other partitions that lie
    within ``threshold_arcsec`` of it (HATS writes it beside the catalog in a collection)."""

    directory: Path
    threshold_arcsec: float
    #: The (order, pixel) of the partitions that have margin rows.
    partitions: frozenset[tuple[int, int]]
    npix_suffix: str

    def read_partition(self, order: int, pixel: int, columns: list[str]) -> pa.Table | None:
        """The margin rows of one partition; None where the partition has none."""
        if (order, pixel) not in self.partitions:
            return None
        return _read_parquet(
            partition_path(self.directory, order, pixel, self.npix_suffix), columns
        )


@dataclass(frozen=True, eq=False)
class HatsCatalog:
    """What a query needs to know about a HATS catalog, read once when it is opened."""

    directory: Path
    name: str
    ra_column: str
    dec_column: str
    #: The column ties are broken on; None for a catalog that names none (ties then go to
    #: the smaller RA, then Dec, which no file order changes either).
    id_column: str | None
    schema: pa.Schema
    #: Partitions sorted by (order, pixel).
    orders: npt.NDArray[np.int64]
    pixels: npt.NDArray[np.int64]
    npix_suffix: str
    #: The default margin cache of a collection; None for a catalog without one.
    margin: HatsMargin | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """The catalog's columns (HATS' spatial index column is internal and left out)."""
        return tuple(name for name in self.schema.names if name != SPATIAL_INDEX_COLUMN)

    @property
    def tie_break_columns(self) -> tuple[str, ...]:
        if self.id_column is not None:
            return (self.id_column,)
        return (self.ra_column, self.dec_column)

    def partition_path(self, order: int, pixel: int) -> Path:
        """Where one partition's rows are (a file, or a directory of files)."""
        return partition_path(self.directory, order, pixel, self.npix_suffix)

    def read_partition(self, order: int, pixel: int, columns: list[str]) -> pa.Table:
        """Some columns of one partition, straight from its Parquet file(s)."""
        return _read_parquet(self.partition_path(order, pixel), columns)


def _read_parquet(path: Path, columns: list[str]) -> pa.Table:
    if path.is_dir():
        return pq.read_table(path, columns=columns)
    # ParquetFile.read is several times cheaper per file than pq.read_table's dataset layer.
    with pq.ParquetFile(path) as parquet_file:
        return parquet_file.read(columns=columns)


def partition_path(directory: Path, order: int, pixel: int, npix_suffix: str = ".parquet") -> Path:
    """HATS' path of a partition: ``dataset/Norder=K/Dir=D/Npix=N<suffix>``."""
    suffix = "" if npix_suffix in ("/", "\\") else npix_suffix
    return (
        directory
        / "dataset"
        / f"Norder={order}"
        / f"Dir={pixel // 10_000 * 10_000}"
        / f"Npix={pixel}{suffix}"
    )


def open_hats_catalog(directory: Path) -> HatsCatalog:
    """Read a HATS catalog's metadata (no partition is read); ``HatsFormatError`` if unusable."""
    directory = Path(directory)
    _check_layout(directory)
    return _read_metadata(directory.resolve(), _metadata_signature(directory))


def _metadata_signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Size and modification time of the metadata files present: a catalog rebuilt in place
    is read again, an unchanged one is not."""
    signature = []
    for name in METADATA_FILES:
        try:
            stat = (directory / name).stat()
        except OSError:
            continue
        signature.append((name, stat.st_size, stat.st_mtime_ns))
    return tuple(signature)


@functools.lru_cache(maxsize=64)
def _read_metadata(directory: Path, _signature: tuple[tuple[str, int, int], ...]) -> HatsCatalog:
    """``read_with_hats`` in a child process, so that this one never imports hats; in this
    process where hats is loaded already (``catalog build``, LSDB), as nothing is saved."""
    if "hats" in sys.modules:
        return read_with_hats(directory)
    command = [sys.executable, "-m", HELPER_MODULE, str(directory)]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            timeout=METADATA_READ_TIMEOUT_SECONDS,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise HatsFormatError(
            f"{directory}: reading the HATS catalog's metadata took more than "
            f"{METADATA_READ_TIMEOUT_SECONDS:g} s; is the file system answering?"
        ) from error
    if done.returncode == FORMAT_ERROR_STATUS:
        raise HatsFormatError(done.stderr.decode(errors="replace").strip())
    if done.returncode != 0:
        raise RuntimeError(
            f"the process reading the HATS catalog {directory} failed (exit status "
            f"{done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}"
        )
    catalog = pickle.loads(done.stdout)
    if not isinstance(catalog, HatsCatalog):
        raise RuntimeError(f"the process reading {directory} answered {type(catalog).__name__}")
    return catalog


def read_with_hats(directory: Path) -> HatsCatalog:
    """The catalog's metadata as the hats library reads it (imports hats: see the module's
    docstring for why this runs in a helper process)."""
    import hats
    from hats.catalog import CatalogCollection

    try:
        with warnings.catch_warnings():
            # hats warns, then lists the files, when partition_info.csv is missing.
            warnings.simplefilter("ignore")
            loaded = hats.read_hats(directory, read_moc=False)
    except (OSError, ValueError, KeyError, NotImplementedError) as error:
        raise HatsFormatError(f"{directory}: cannot read the HATS catalog: {error}") from error
    margin = None
    if isinstance(loaded, CatalogCollection):
        margin_directory = loaded.default_margin_catalog_dir
        if margin_directory is not None:
            margin = _open_margin(Path(str(margin_directory)))
        loaded = loaded.main_catalog
    info = loaded.catalog_info
    base = Path(str(loaded.catalog_path))
    if str(info.catalog_type) not in ("object", "source"):
        raise HatsFormatError(
            f"{base}: a HATS {info.catalog_type} catalog cannot be matched against; point at an "
            "object or source catalog"
        )
    if not info.ra_column or not info.dec_column:
        raise HatsFormatError(f"{base}/{PROPERTIES_FILE} names no hats_col_ra / hats_col_dec")
    partitions = sorted((pixel.order, pixel.pixel) for pixel in loaded.get_healpix_pixels())
    if not partitions:
        raise _no_partition_info(base)
    orders = np.array([order for order, _ in partitions], dtype=np.int64)
    pixels = np.array([pixel for _, pixel in partitions], dtype=np.int64)
    suffix = info.npix_suffix
    schema = loaded.schema
    if schema is None:  # no _common_metadata: the first partition's schema stands for all
        path = partition_path(base, int(orders[0]), int(pixels[0]), suffix)
        schema = pq.read_schema(path) if path.is_file() else pq.ParquetDataset(path).schema
    extra = info.__pydantic_extra__ or {}
    id_column = extra.get(ID_COLUMN_PROPERTY)
    for required in (info.ra_column, info.dec_column, id_column):
        if required is not None and required not in schema.names:
            raise HatsFormatError(f"{base}: column {required!r} named by properties is absent")
    if margin is not None:
        _check_margin_columns(margin, schema, base)
    return HatsCatalog(
        directory=base,
        name=str(info.catalog_name),
        ra_column=str(info.ra_column),
        dec_column=str(info.dec_column),
        id_column=None if id_column is None else str(id_column),
        schema=schema,
        orders=orders,
        pixels=pixels,
        npix_suffix=suffix,
        margin=margin,
    )


def _check_layout(directory: Path) -> None:
    """The files every HATS catalog has, checked before hats reads them, to say what is missing."""
    if not directory.is_dir():
        raise HatsFormatError(f"{directory} is not a directory holding a HATS catalog")
    if not any(
        (directory / name).is_file()
        for name in (PROPERTIES_FILE, "hats.properties", "collection.properties")
    ):
        raise HatsFormatError(
            f"{directory} is not a HATS catalog: it has no `{PROPERTIES_FILE}` file (a HATS "
            "catalog's root holds `properties`, `partition_info.csv` and `dataset/`); build one "
            "with `xmatch-pipeline catalog build` or point at the catalog's root directory"
        )
    if not (directory / "collection.properties").is_file() and not _lists_partitions(directory):
        raise _no_partition_info(directory)


def _open_margin(directory: Path) -> HatsMargin:
    """The collection's default margin; a declared margin that cannot be read is refused."""
    import hats

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = hats.read_hats(directory, read_moc=False)
    except (OSError, ValueError, KeyError, NotImplementedError) as error:
        raise HatsFormatError(
            f"{directory}: the collection's default margin cannot be read: {error}; copy the "
            "collection again, or remove `default_margin` from its collection.properties"
        ) from error
    info = loaded.catalog_info
    if str(info.catalog_type) != "margin" or not info.margin_threshold:
        raise HatsFormatError(
            f"{directory}: the collection's default margin is not a HATS margin catalog with "
            "an `hats_margin_threshold`"
        )
    return HatsMargin(
        directory=Path(str(loaded.catalog_path)),
        threshold_arcsec=float(info.margin_threshold),
        partitions=frozenset((p.order, p.pixel) for p in loaded.get_healpix_pixels()),
        npix_suffix=info.npix_suffix,
    )


def _check_margin_columns(margin: HatsMargin, schema: pa.Schema, base: Path) -> None:
    """The margin must hold the catalog's columns, or its rows could not stand in for them."""
    if not margin.partitions:
        return
    order, pixel = min(margin.partitions)
    path = partition_path(margin.directory, order, pixel, margin.npix_suffix)
    names = set(
        pq.read_schema(path).names if path.is_file() else pq.ParquetDataset(path).schema.names
    )
    missing = [name for name in schema.names if name not in names]
    if missing:
        raise HatsFormatError(
            f"{margin.directory}: the margin of {base} lacks column(s) {', '.join(missing)}"
        )


def _lists_partitions(directory: Path) -> bool:
    """Whether hats can list the partitions: the CSV, ``_metadata``, or partition folders."""
    return (
        (directory / PARTITION_INFO_FILE).is_file()
        or (directory / "dataset" / "_metadata").is_file()
        or any((directory / "dataset").glob("Norder=*"))
    )


def _no_partition_info(directory: Path) -> HatsFormatError:
    return HatsFormatError(
        f"{directory} has no partition info: no `{PARTITION_INFO_FILE}`, no `dataset/_metadata` "
        "and no partition folders `dataset/Norder=*`; the copy is incomplete"
    )
