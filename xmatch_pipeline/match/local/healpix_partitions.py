"""Which HEALPix partitions (nested scheme, any mix of orders) a disk around a position touches.

The pixel arithmetic is astropy-healpix's; this module only decides which pixels a query
must read. A disk of radius r around a position lies inside the position's pixel and its
eight neighbours at any order whose pixels are much wider than r, so the neighbours are
taken at the finest such order and then mapped to the partitions holding them, whatever
their orders: a position deep inside a partition touches that partition only, one near an
edge or corner touches two to four.
"""

from __future__ import annotations

import astropy.units as u
import numpy as np
import numpy.typing as npt
from astropy_healpix import core as healpix

IntArray = npt.NDArray[np.int64]

MAX_ORDER = 29

#: The neighbour ring must be this many times wider than the search radius: HEALPix pixels
#: are distorted near the poles and at the 8 three-neighbour corners, so a generous margin
#: keeps the covering exact everywhere.
_RESOLUTION_PER_RADIUS = 8.0


def nside_of(order: int) -> int:
    if not 0 <= order <= MAX_ORDER:
        raise ValueError(f"HEALPix order must be in [0, {MAX_ORDER}], got {order}")
    return 1 << order


def pixel_count(order: int) -> int:
    return 12 * nside_of(order) ** 2


def pixel_resolution_arcsec(order: int) -> float:
    """Square root of a pixel's area, the usual HEALPix resolution figure."""
    return float(healpix.nside_to_pixel_resolution(nside_of(order)).to_value(u.arcsec))


def pixels_of(ra_deg: npt.ArrayLike, dec_deg: npt.ArrayLike, order: int) -> IntArray:
    """Nested pixel index of each position at ``order``."""
    ra = np.asarray(ra_deg, dtype=np.float64)
    dec = np.asarray(dec_deg, dtype=np.float64)
    pixels = healpix.lonlat_to_healpix(ra * u.deg, dec * u.deg, nside_of(order), order="nested")
    return np.asarray(pixels, dtype=np.int64)


def neighbour_order(radius_arcsec: float) -> int:
    """Finest order whose pixels are wide enough that pixel + neighbours cover the disk."""
    wanted = _RESOLUTION_PER_RADIUS * radius_arcsec
    order = 0
    while order < MAX_ORDER and pixel_resolution_arcsec(order + 1) >= wanted:
        order += 1
    return order


def covering_partitions(
    ra_deg: npt.ArrayLike,
    dec_deg: npt.ArrayLike,
    radius_arcsec: float,
    partition_orders: IntArray,
    partition_pixels: IntArray,
) -> tuple[IntArray, IntArray]:
    """Every (position index, partition index) pair whose partition a disk may overlap.

    Partitions may be of mixed orders, as in a HATS catalog; they are given sorted by
    (order, pixel) and must not overlap. Pairs are unique and sorted by partition index,
    then position index. Sky that no partition covers is simply not touched.
    """
    candidates, present, order = _disk_cover(ra_deg, dec_deg, radius_arcsec)
    count = candidates.shape[1]
    if count == 0 or partition_pixels.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if order >= int(partition_orders.max()):
        return _cover_by_finer_pixels(candidates, order, partition_orders, partition_pixels)
    positions = np.broadcast_to(np.arange(count, dtype=np.int64), candidates.shape)[present]
    fine_pixels = candidates[present]
    # Compare pixels as ranges of order-`depth` pixels: a partition of order k is the range
    # [p << 2(depth - k), (p + 1) << 2(depth - k)), and so is each disk's fine pixel.
    depth = max(order, int(partition_orders.max()))
    by_start, starts, ends = _partition_ranges(depth, partition_orders, partition_pixels)
    query_start = fine_pixels << (2 * (depth - order))
    query_end = (fine_pixels + 1) << (2 * (depth - order))
    first = np.searchsorted(ends, query_start, side="right")
    last = np.searchsorted(starts, query_end, side="left")
    counts = np.maximum(last - first, 0)
    pair_positions = np.repeat(positions, counts)
    offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(
        np.cumsum(counts) - counts, counts
    )
    pair_partitions = by_start[np.repeat(first, counts) + offsets].astype(np.int64)
    keys = np.unique(pair_partitions * count + pair_positions)
    return keys % count, keys // count


def _cover_by_finer_pixels(
    candidates: IntArray, order: int, partition_orders: IntArray, partition_pixels: IntArray
) -> tuple[IntArray, IntArray]:
    """``covering_partitions`` when the disks' pixels are no coarser than any partition, the
    usual case: each pixel then lies in at most one partition, found by one search, and the
    nine pixels of a disk (mostly in one partition) are deduplicated per disk, not globally."""
    count = candidates.shape[1]
    partitions = _holding_partitions(
        candidates, _partition_ranges(order, partition_orders, partition_pixels)
    )
    partitions.sort(axis=0)
    keep = partitions >= 0
    keep[1:] &= partitions[1:] != partitions[:-1]
    positions = np.broadcast_to(np.arange(count, dtype=np.int64), candidates.shape)[keep]
    pair_partitions = partitions[keep].astype(np.int64)
    by_pair = np.argsort(pair_partitions * count + positions, kind="stable")
    return positions[by_pair], pair_partitions[by_pair]


def containing_partitions(
    ra_deg: npt.ArrayLike,
    dec_deg: npt.ArrayLike,
    partition_orders: IntArray,
    partition_pixels: IntArray,
) -> tuple[IntArray, IntArray]:
    """(position index, partition index) of the one partition each position lies in.

    Partitions as for ``covering_partitions``; a position that no partition covers is left
    out. Pairs are sorted by position index.
    """
    ra = np.asarray(ra_deg, dtype=np.float64)
    if ra.size == 0 or partition_pixels.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    depth = int(partition_orders.max())
    held = _holding_partitions(
        pixels_of(ra, dec_deg, depth), _partition_ranges(depth, partition_orders, partition_pixels)
    )
    inside = np.flatnonzero(held >= 0).astype(np.int64)
    return inside, held[inside].astype(np.int64)


PartitionRanges = tuple[IntArray, IntArray, IntArray]


def _partition_ranges(
    depth: int, partition_orders: IntArray, partition_pixels: IntArray
) -> PartitionRanges:
    """Each partition as the range [start, end) of order-``depth`` pixels it holds (a pixel p
    of order k is [p << 2(depth - k), (p + 1) << 2(depth - k))): the partitions' indices in
    order of start, and the sorted starts and ends (partitions do not overlap)."""
    shifts = 2 * (depth - partition_orders)
    by_start = np.argsort(partition_pixels << shifts, kind="stable")
    pixels, shifts = partition_pixels[by_start], shifts[by_start]
    return by_start, pixels << shifts, (pixels + 1) << shifts


def _holding_partitions(pixels: IntArray, ranges: PartitionRanges) -> IntArray:
    """Index of the partition holding each pixel of the ranges' depth; -1 where none does
    (and for -1, astropy-healpix's missing neighbour)."""
    by_start, starts, ends = ranges
    slot = np.maximum(np.searchsorted(starts, pixels, side="right") - 1, 0)
    inside = (pixels >= starts[slot]) & (pixels < ends[slot])
    return np.where(inside, by_start[slot], -1)


def _disk_cover(
    ra_deg: npt.ArrayLike, dec_deg: npt.ArrayLike, radius_arcsec: float
) -> tuple[IntArray, npt.NDArray[np.bool_], int]:
    """Nine pixels at one order (centre and neighbours, one column per position) that
    together cover each disk, which of them exist, and the order."""
    ra = np.asarray(ra_deg, dtype=np.float64)
    count = ra.size
    order = neighbour_order(radius_arcsec)
    centres = pixels_of(ra, dec_deg, order)
    with np.errstate(invalid="ignore"):  # astropy-healpix flags the missing corner neighbour
        neighbours = np.asarray(
            healpix.neighbours(centres, nside_of(order), order="nested"), dtype=np.int64
        )
    candidates = np.vstack((centres[np.newaxis, :], neighbours.reshape(8, count)))
    return candidates, candidates >= 0, order  # -1 marks the missing neighbour at 3-pixel corners


def pixel_runs(sorted_pixels: npt.NDArray[np.int64]) -> list[tuple[int, int, int]]:
    """``(pixel, start, end)`` of each run of equal values in a sorted pixel array."""
    if sorted_pixels.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, sorted_pixels[1:] != sorted_pixels[:-1]])
    ends = np.r_[starts[1:], sorted_pixels.size]
    return [
        (int(sorted_pixels[start]), int(start), int(end))
        for start, end in zip(starts, ends, strict=True)
    ]
