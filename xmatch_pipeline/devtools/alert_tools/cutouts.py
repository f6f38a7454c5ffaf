"""Gzipped FITS image stamps sized like ZTF's 63x63 cutouts (~12 kB each once gzipped).

Real pixel noise in float32 keeps gzip from shrinking them to nothing, so synthetic alerts
weigh what real ones weigh on the wire.
"""

from __future__ import annotations

import gzip

import numpy as np

CUTOUT_SIDE = 63
FITS_BLOCK = 2880
CUTOUT_KINDS = ("science", "template", "difference")


def _card(keyword: str, value: str | int | bool, comment: str = "") -> bytes:
    if isinstance(value, bool):
        rendered = ("T" if value else "F").rjust(20)
    elif isinstance(value, str):
        rendered = f"'{value}'".ljust(20)
    else:
        rendered = str(value).rjust(20)
    text = f"{keyword:<8}= {rendered}"
    if comment:
        text += f" / {comment}"
    return text[:80].ljust(80).encode("ascii")


def _pad(block: bytes, filler: bytes) -> bytes:
    remainder = len(block) % FITS_BLOCK
    return block if remainder == 0 else block + filler * (FITS_BLOCK - remainder)


def fits_image(pixels: np.ndarray) -> bytes:
    """A minimal valid FITS file (primary HDU, 32-bit float image)."""
    height, width = pixels.shape
    header = b"".join(
        (
            _card("SIMPLE", True, "conforms to FITS standard"),
            _card("BITPIX", -32, "IEEE single precision"),
            _card("NAXIS", 2),
            _card("NAXIS1", width),
            _card("NAXIS2", height),
            _card("BUNIT", "DN"),
            _card("ORIGIN", "xmatch-pipeline", "synthetic cutout"),
            b"END".ljust(80),
        )
    )
    data = pixels.astype(">f4", copy=False).tobytes()
    return _pad(header, b" ") + _pad(data, b"\x00")


def _gaussian_source(amplitude: float, sigma: float) -> np.ndarray:
    axis = np.arange(CUTOUT_SIDE) - CUTOUT_SIDE // 2
    squared = axis[:, None] ** 2 + axis[None, :] ** 2
    return amplitude * np.exp(-squared / (2.0 * sigma**2))


def synthetic_cutout(kind: str, rng: np.random.Generator) -> bytes:
    """One gzipped FITS stamp: sky, noise and a point source, as in a ZTF cutout."""
    sigma_psf = rng.uniform(0.8, 1.6)
    if kind == "science":
        pixels = rng.normal(150.0, 12.0, (CUTOUT_SIDE, CUTOUT_SIDE))
        pixels += _gaussian_source(rng.uniform(200, 2000), sigma_psf)
    elif kind == "template":
        pixels = rng.normal(600.0, 6.0, (CUTOUT_SIDE, CUTOUT_SIDE))
        pixels += _gaussian_source(rng.uniform(100, 4000), sigma_psf)
    elif kind == "difference":
        pixels = rng.normal(0.0, 14.0, (CUTOUT_SIDE, CUTOUT_SIDE))
        pixels += _gaussian_source(rng.uniform(80, 800), sigma_psf)
    else:
        raise ValueError(f"unknown cutout kind {kind!r} (expected one of {CUTOUT_KINDS})")
    return gzip.compress(fits_image(pixels.astype(np.float32)), compresslevel=6, mtime=0)


def cutout_pool(seed: int, size: int) -> dict[str, tuple[bytes, ...]]:
    """``size`` distinct stamps per kind, the same for the same seed."""
    rng = np.random.default_rng([seed, 0xC0])
    return {kind: tuple(synthetic_cutout(kind, rng) for _ in range(size)) for kind in CUTOUT_KINDS}
