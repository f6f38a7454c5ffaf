"""Angles on the celestial sphere, in double precision.

The KD-tree works on unit vectors and chord lengths (cheap, monotonic in angle); the
reported distance is then recomputed with Vincenty's formula, which keeps full precision
at tiny separations (where the cosine formula loses digits) and near 180° (where
haversine does), and needs no special case at RA 0/360 or at the poles.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

ARCSEC_PER_DEGREE = 3600.0


def unit_vectors(ra_deg: npt.ArrayLike, dec_deg: npt.ArrayLike) -> FloatArray:
    """Cartesian unit vectors, shape ``(n, 3)``, for positions in degrees."""
    ra = np.radians(np.asarray(ra_deg, dtype=np.float64))
    dec = np.radians(np.asarray(dec_deg, dtype=np.float64))
    vectors = np.empty((ra.size, 3), dtype=np.float64)
    cos_dec = np.cos(dec)
    # Written in place: partitions of millions of rows go through here on every cold batch.
    np.cos(ra, out=vectors[:, 0])
    vectors[:, 0] *= cos_dec
    np.sin(ra, out=vectors[:, 1])
    vectors[:, 1] *= cos_dec
    np.sin(dec, out=vectors[:, 2])
    return vectors


def chord_length(angle_arcsec: float) -> float:
    """Straight-line distance between two unit vectors separated by ``angle_arcsec``."""
    return float(2.0 * np.sin(np.radians(angle_arcsec / ARCSEC_PER_DEGREE) / 2.0))


def separation_arcsec(
    ra1_deg: npt.ArrayLike,
    dec1_deg: npt.ArrayLike,
    ra2_deg: npt.ArrayLike,
    dec2_deg: npt.ArrayLike,
) -> FloatArray:
    """Great-circle distance in arcsec by Vincenty's formula (accurate at every scale)."""
    ra1 = np.radians(np.asarray(ra1_deg, dtype=np.float64))
    dec1 = np.radians(np.asarray(dec1_deg, dtype=np.float64))
    ra2 = np.radians(np.asarray(ra2_deg, dtype=np.float64))
    dec2 = np.radians(np.asarray(dec2_deg, dtype=np.float64))
    delta_ra = ra2 - ra1
    sin_delta, cos_delta = np.sin(delta_ra), np.cos(delta_ra)
    sin_dec1, cos_dec1 = np.sin(dec1), np.cos(dec1)
    sin_dec2, cos_dec2 = np.sin(dec2), np.cos(dec2)
    numerator = np.hypot(
        cos_dec2 * sin_delta, cos_dec1 * sin_dec2 - sin_dec1 * cos_dec2 * cos_delta
    )
    denominator = sin_dec1 * sin_dec2 + cos_dec1 * cos_dec2 * cos_delta
    angle: FloatArray = np.degrees(np.arctan2(numerator, denominator)) * ARCSEC_PER_DEGREE
    return angle
