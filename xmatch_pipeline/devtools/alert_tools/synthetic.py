"""Synthetic ZTF 3.3 alerts for tests, demos and benchmarks.

Deterministic for a seed (byte-identical across runs and machines), valid against the
packaged 3.3 schema, and as heavy as real alerts (~65 kB: embedded schema, three ~13 kB
gzipped FITS cutouts, a history of previous candidates). Fast enough for 50,000+ alerts:
a template record is copied and a few fields varied; cutouts come from a precomputed pool.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xmatch_pipeline.decode import AlertSchema, encode_alert, ztf_alert_schema
from xmatch_pipeline.devtools.alert_tools.cutouts import CUTOUT_KINDS, cutout_pool

ALERTS_PER_EXPOSURE = 64
"""Alerts sharing a ``pid`` (one readout quadrant's worth); ``candid`` = pid * 1e6 + n."""

FIELD_HALF_WIDTH_DEG = 3.5
ZTF_SOUTHERN_LIMIT_DEG = -31.0
FIRST_NIGHT_JD = 2458849.5  # 2020-01-01, night id 1095
FIRST_NIGHT_ID = 1095
CUTOUT_POOL_SIZE = 16
_FILE_SUFFIX = {"science": "sci", "template": "ref", "difference": "diff"}
_CUTOUT_FIELDS = {
    "science": "cutoutScience",
    "template": "cutoutTemplate",
    "difference": "cutoutDifference",
}


class PositionsFileError(ValueError):
    """A positions CSV that cannot be used; the message names the file and the problem."""


def read_positions_csv(path: Path | str) -> list[tuple[float, float]]:
    """(ra, dec) pairs in degrees from a CSV with ``ra`` and ``dec`` columns (any case)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = {name.strip().lower(): name for name in reader.fieldnames or []}
            if "ra" not in columns or "dec" not in columns:
                raise PositionsFileError(
                    f"{path}: needs 'ra' and 'dec' columns, found {reader.fieldnames}"
                )
            positions: list[tuple[float, float]] = []
            for line_number, row in enumerate(reader, start=2):
                try:
                    ra = float(row[columns["ra"]])
                    dec = float(row[columns["dec"]])
                except (TypeError, ValueError) as error:
                    raise PositionsFileError(
                        f"{path}:{line_number}: bad ra/dec ({error})"
                    ) from error
                if not (0.0 <= ra < 360.0 and -90.0 <= dec <= 90.0) or math.isnan(ra + dec):
                    raise PositionsFileError(f"{path}:{line_number}: ra/dec out of range")
                positions.append((ra, dec))
    except OSError as error:
        raise PositionsFileError(f"{path}: cannot read ({error.strerror or error})") from error
    if not positions:
        raise PositionsFileError(f"{path}: no positions")
    return positions


def _template_candidate() -> dict[str, Any]:
    """Plausible values for every 3.3 candidate field; the varied ones are set per alert."""
    return {
        "jd": FIRST_NIGHT_JD, "fid": 1, "pid": 0, "diffmaglim": 20.4,
        "pdiffimfilename": "", "programpi": "Kulkarni", "programid": 1, "candid": 0,
        "isdiffpos": "t", "tblid": 0, "nid": FIRST_NIGHT_ID, "rcid": 0, "field": 0,
        "xpos": 1500.0, "ypos": 1500.0, "ra": 0.0, "dec": 0.0, "magpsf": 19.0,
        "sigmapsf": 0.1, "chipsf": 1.4, "magap": 19.1, "sigmagap": 0.12, "distnr": 0.4,
        "magnr": 18.2, "sigmagnr": 0.03, "chinr": 0.8, "sharpnr": 0.01, "sky": 0.05,
        "magdiff": 0.1, "fwhm": 2.3, "classtar": 0.97, "mindtoedge": 800.0,
        "magfromlim": 1.3, "seeratio": 1.05, "aimage": 0.82, "bimage": 0.76,
        "aimagerat": 0.36, "bimagerat": 0.33, "elong": 1.08, "nneg": 4, "nbad": 0,
        "rb": 0.8, "ssdistnr": None, "ssmagnr": None, "ssnamenr": None, "sumrat": 0.97,
        "magapbig": 19.05, "sigmagapbig": 0.15, "ranr": 0.0, "decnr": 0.0,
        "sgmag1": 18.9, "srmag1": 18.3, "simag1": 18.0, "szmag1": 17.8, "sgscore1": 0.98,
        "distpsnr1": 0.35, "ndethist": 1, "ncovhist": 300, "jdstarthist": None,
        "jdendhist": None, "scorr": 9.5, "tooflag": 0, "objectidps1": None,
        "objectidps2": None, "sgmag2": 21.3, "srmag2": 20.8, "simag2": 20.4,
        "szmag2": 20.1, "sgscore2": 0.5, "distpsnr2": 9.1, "objectidps3": None,
        "sgmag3": -999.0, "srmag3": 21.5, "simag3": 21.0, "szmag3": 20.7,
        "sgscore3": 0.6, "distpsnr3": 14.2, "nmtchps": 12, "rfid": 0,
        "jdstartref": 2458150.7, "jdendref": 2458350.9, "nframesref": 15,
        "rbversion": "t17_f5_c3", "dsnrms": 10.5, "ssnrms": 17.9, "dsdiff": -7.4,
        "magzpsci": 26.3, "magzpsciunc": 5e-05, "magzpscirms": 0.04, "nmatches": 1400,
        "clrcoeff": -0.05, "clrcounc": 3.5e-05, "zpclrcov": -4e-05, "zpmed": 26.3,
        "clrmed": 1.1, "clrrms": 0.2, "neargaia": 0.4, "neargaiabright": 60.0,
        "maggaia": 18.7, "maggaiabright": 13.2, "exptime": 30.0, "drb": 0.99,
        "drbversion": "d6_m7",
    }  # fmt: skip


_PREVIOUS_KEYS = (
    "jd", "fid", "pid", "diffmaglim", "pdiffimfilename", "programpi", "programid", "candid",
    "isdiffpos", "tblid", "nid", "rcid", "field", "xpos", "ypos", "ra", "dec", "magpsf",
    "sigmapsf", "chipsf", "magap", "sigmagap", "distnr", "magnr", "sigmagnr", "chinr",
    "sharpnr", "sky", "magdiff", "fwhm", "classtar", "mindtoedge", "magfromlim", "seeratio",
    "aimage", "bimage", "aimagerat", "bimagerat", "elong", "nneg", "nbad", "rb", "ssdistnr",
    "ssmagnr", "ssnamenr", "sumrat", "magapbig", "sigmagapbig", "ranr", "decnr", "scorr",
    "magzpsci", "magzpsciunc", "magzpscirms", "clrcoeff", "clrcounc", "rbversion",
)  # fmt: skip
_DETECTION_ONLY_KEYS = (
    "candid", "isdiffpos", "tblid", "xpos", "ypos", "ra", "dec", "magpsf", "sigmapsf",
    "chipsf", "magap", "sigmagap", "distnr", "magnr", "sigmagnr", "chinr", "sharpnr", "sky",
    "magdiff", "fwhm", "classtar", "mindtoedge", "magfromlim", "seeratio", "aimage",
    "bimage", "aimagerat", "bimagerat", "elong", "nneg", "nbad", "rb", "ssdistnr",
    "ssmagnr", "ssnamenr", "sumrat", "magapbig", "sigmagapbig", "ranr", "decnr", "scorr",
)  # fmt: skip


def _object_id(year: int, number: int) -> str:
    letters = []
    for _ in range(7):
        number, digit = divmod(number, 26)
        letters.append(chr(ord("a") + digit))
    return f"ZTF{year % 100:02d}{''.join(reversed(letters))}"


def _diff_image_name(jd: float, field: int, fid: int, rcid: int) -> str:
    band = {1: "zg", 2: "zr", 3: "zi"}[fid]
    stamp = f"{round((jd - FIRST_NIGHT_JD) * 1e6):014d}"
    return (
        f"ztf_{stamp}_{field:06d}_{band}_c{rcid // 4 + 1:02d}_o_q{rcid % 4 + 1}_scimrefdiffimg.fits"
    )


@dataclass(frozen=True)
class _Exposure:
    """What all alerts of one exposure share: time, band, field centre, processing id."""

    jd: float
    fid: int
    field: int
    rcid: int
    pid: int
    center_ra: float
    center_dec: float


class SyntheticAlertFactory:
    """Builds alert ``index`` of the stream for ``seed``; any index, in any order."""

    def __init__(
        self,
        seed: int = 0,
        positions: Sequence[tuple[float, float]] | None = None,
        *,
        schema: AlertSchema | None = None,
    ) -> None:
        self.seed = seed
        self.positions = list(positions) if positions else None
        self.schema = schema or ztf_alert_schema("3.3")
        self._cutouts = cutout_pool(seed, CUTOUT_POOL_SIZE)
        self._candidate = _template_candidate()
        self._previous = {key: self._candidate[key] for key in _PREVIOUS_KEYS}
        self._pid_base = 1_095_000_000_000 + (seed % 100) * 10_000_000
        self._object_base = (seed % 1000) * 10_000_000

    def _exposure(self, exposure_index: int) -> _Exposure:
        rng = random.Random(f"xmatch-synthetic:{self.seed}:exposure:{exposure_index}")
        night = exposure_index // 800
        center_dec = math.degrees(math.asin(rng.uniform(math.sin(math.radians(-30.0)), 1.0)))
        rcid = rng.randrange(64)
        return _Exposure(
            jd=FIRST_NIGHT_JD + night + 0.15 + (exposure_index % 800) * 45.0 / 86400.0,
            fid=rng.choice((1, 1, 2, 2, 3)),
            field=rng.randrange(245, 880),
            rcid=rcid,
            pid=self._pid_base + exposure_index * 100 + rcid,
            center_ra=rng.uniform(0.0, 360.0),
            center_dec=center_dec,
        )

    def _position(self, index: int, exposure: _Exposure, rng: random.Random) -> tuple[float, float]:
        if self.positions is not None:
            return self.positions[index % len(self.positions)]
        dec = exposure.center_dec + rng.uniform(-FIELD_HALF_WIDTH_DEG, FIELD_HALF_WIDTH_DEG)
        dec = max(ZTF_SOUTHERN_LIMIT_DEG, min(89.9, dec))
        spread = FIELD_HALF_WIDTH_DEG / max(math.cos(math.radians(dec)), 0.05)
        ra = (exposure.center_ra + rng.uniform(-spread, spread)) % 360.0
        return ra, dec

    def record(self, index: int) -> dict[str, Any]:
        """The alert record ``index`` (a new dict; cutout bytes are shared, never mutated)."""
        exposure = self._exposure(index // ALERTS_PER_EXPOSURE)
        rng = random.Random(f"xmatch-synthetic:{self.seed}:alert:{index}")
        ra, dec = self._position(index, exposure, rng)
        candid = exposure.pid * 1_000_000 + 15_000 + index % ALERTS_PER_EXPOSURE
        magpsf = rng.uniform(15.5, 20.5)
        history = rng.randrange(4, 28)
        first_jd = exposure.jd - rng.uniform(30.0, 600.0)
        candidate = dict(self._candidate)
        candidate.update(
            jd=exposure.jd, fid=exposure.fid, pid=exposure.pid, candid=candid,
            nid=FIRST_NIGHT_ID + int(exposure.jd - FIRST_NIGHT_JD), rcid=exposure.rcid,
            field=exposure.field, ra=ra, dec=dec, magpsf=magpsf,
            sigmapsf=rng.uniform(0.02, 0.2), diffmaglim=rng.uniform(19.8, 21.0),
            isdiffpos=rng.choice("tttf"), tblid=index % ALERTS_PER_EXPOSURE,
            xpos=rng.uniform(10.0, 3070.0), ypos=rng.uniform(10.0, 3070.0),
            ranr=(ra + rng.uniform(-2e-5, 2e-5)) % 360.0,
            decnr=min(90.0, max(-90.0, dec + rng.uniform(-2e-5, 2e-5))),
            rb=rng.uniform(0.3, 1.0), drb=rng.uniform(0.0, 1.0), magap=magpsf + 0.1,
            ndethist=history, jdstarthist=first_jd, jdendhist=exposure.jd,
            objectidps1=100_000_000_000_000_000 + rng.randrange(10**17),
            objectidps2=100_000_000_000_000_000 + rng.randrange(10**17),
            objectidps3=100_000_000_000_000_000 + rng.randrange(10**17),
            rfid=exposure.field * 1_000_000 + exposure.rcid * 1000 + 144,
            pdiffimfilename=_diff_image_name(
                exposure.jd, exposure.field, exposure.fid, exposure.rcid
            ),
        )  # fmt: skip
        previous = [
            self._previous_candidate(
                rng, candidate, first_jd=first_jd, last_jd=exposure.jd, step=step, count=history
            )
            for step in range(history)
        ]
        record: dict[str, Any] = {
            "schemavsn": "3.3",
            "publisher": "xmatch-pipeline synthetic",
            "objectId": _object_id(20, self._object_base + index),
            "candid": candid,
            "candidate": candidate,
            "prv_candidates": previous,
        }
        for kind in CUTOUT_KINDS:
            record[_CUTOUT_FIELDS[kind]] = {
                "fileName": f"candid{candid}_pid{exposure.pid}_targ_{_FILE_SUFFIX[kind]}.fits.gz",
                "stampData": rng.choice(self._cutouts[kind]),
            }
        return record

    def _previous_candidate(
        self,
        rng: random.Random,
        candidate: dict[str, Any],
        *,
        first_jd: float,
        last_jd: float,
        step: int,
        count: int,
    ) -> dict[str, Any]:
        jd = first_jd + (last_jd - first_jd) * step / count
        pid = int((jd - FIRST_NIGHT_JD + 1000) * 1e6) * 100 + candidate["rcid"]
        entry = dict(self._previous)
        entry.update(
            jd=jd, fid=rng.choice((1, 2)), pid=pid, nid=FIRST_NIGHT_ID + int(jd - FIRST_NIGHT_JD),
            rcid=candidate["rcid"], field=candidate["field"], diffmaglim=rng.uniform(19.5, 21.0),
            pdiffimfilename=_diff_image_name(jd, candidate["field"], 1, candidate["rcid"]),
        )  # fmt: skip
        if rng.random() < 0.4:
            entry.update(
                candid=pid * 1_000_000 + 15_000 + step,
                ra=(candidate["ra"] + rng.gauss(0, 2e-5)) % 360.0,
                dec=min(90.0, max(-90.0, candidate["dec"] + rng.gauss(0, 2e-5))),
                magpsf=rng.uniform(17.0, 20.5),
                sigmapsf=rng.uniform(0.03, 0.2), ranr=candidate["ranr"], decnr=candidate["decnr"],
            )  # fmt: skip
        else:
            entry.update(dict.fromkeys(_DETECTION_ONLY_KEYS))
        return entry

    def alert_bytes(self, index: int) -> bytes:
        """Alert ``index`` as a Kafka message value: one Avro container, schema embedded."""
        return encode_alert(self.record(index), self.schema)


def generate_alert_bytes(
    count: int,
    *,
    seed: int = 0,
    positions: Sequence[tuple[float, float]] | None = None,
    start: int = 0,
) -> Iterator[bytes]:
    """``count`` synthetic alert messages in memory, alerts ``start`` … ``start + count - 1``."""
    factory = SyntheticAlertFactory(seed, positions)
    for index in range(start, start + count):
        yield factory.alert_bytes(index)


def write_synthetic_alerts(
    out_dir: Path | str,
    count: int,
    *,
    seed: int = 0,
    positions: Sequence[tuple[float, float]] | None = None,
    on_written: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write one ``<candid>.avro`` container per alert into ``out_dir``; returns the paths.

    ``on_written`` is called with each file's size (for progress and totals).
    """
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    factory = SyntheticAlertFactory(seed, positions)
    written: list[Path] = []
    for index in range(count):
        record = factory.record(index)
        data = encode_alert(record, factory.schema)
        path = directory / f"{record['candid']}.avro"
        path.write_bytes(data)
        written.append(path)
        if on_written is not None:
            on_written(len(data))
    return written
