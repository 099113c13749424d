"""Patient metadata (age, sex, body site) of a collection, and the subgroups evaluation reports.

The model never sees these values; they travel from the collection into the cache
(``<split>/metadata.json``, see :mod:`dermogaze.data.cache`) so that results can be broken down by
patient subgroup.

Accepted CSV columns (matched case-insensitively, surrounding spaces ignored):

======================  ===========================================================
ISIC 2017               ``image_id,age_approximate,sex``  (``ISIC-2017_<split>_Data_metadata.csv``)
HAM10000                ``lesion_id,image_id,dx,dx_type,age,sex,localization``
======================  ===========================================================

A field is stored when its column exists: :data:`AGE` from ``age_approximate`` or ``age``,
:data:`SEX` from ``sex``, :data:`LOCALIZATION` from ``localization``; other columns are ignored.
Values ``unknown`` (any case), empty and missing cells are ``None``. Ages are floats in years (ISIC
gives multiples of 5); sex is ``"female"`` or ``"male"``; a body site is kept as written, in lower
case.

Subgroups (:func:`group_labels`): sex and body site are their own values; ages fall into bands of
:data:`AGE_BAND_YEARS` years, ``[20k, 20k + 20)`` labelled ``"20k-(20k+19)"`` (``"0-19"``,
``"20-39"``, ``"40-59"``, ``"60-79"``), and every age from :data:`AGE_TOP_BAND` on is one band,
``"80+"``. So 19 and 19.9 are ``"0-19"``, 20 is ``"20-39"``, 79.9 is ``"60-79"``, 80 and 95 are
``"80+"``. The labels sort in age order as strings.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, DermogazeError

log = logging.getLogger(__name__)

AGE = "age"
SEX = "sex"
LOCALIZATION = "localization"
#: Every field a cache may hold, in the order they are stored.
FIELDS: tuple[str, ...] = (AGE, SEX, LOCALIZATION)

#: Width of an age band of :func:`group_labels`, in years.
AGE_BAND_YEARS = 20
#: Ages from this one on form a single open band (``"80+"``).
AGE_TOP_BAND = 80

SEXES = ("female", "male")
#: CSV column(s) of each field, preferred first.
COLUMNS: dict[str, tuple[str, ...]] = {AGE: ("age_approximate", "age"), SEX: ("sex",), LOCALIZATION: ("localization",)}
UNKNOWN = "unknown"

Value = float | str | None


@dataclass(frozen=True)
class MetadataTable:
    """The rows of one metadata CSV.

    Attributes:
        source: the CSV file.
        fields: the fields its columns hold, in :data:`FIELDS` order.
        rows: lower-case image id → ``{field: value or None}``.
    """

    source: Path
    fields: tuple[str, ...]
    rows: dict[str, dict[str, Value]]

    def columns(self, ids: Sequence[str]) -> dict[str, list[Value]]:
        """``{field: [value per id]}`` aligned with ``ids``; ``None`` where unknown or without a row.

        Ids are matched case-insensitively; images without a row are counted in a warning.
        """
        found = [self.rows.get(i.lower()) for i in ids]
        missing = [i for i, row in zip(ids, found, strict=True) if row is None]
        if missing:
            log.warning("%s: no row for %d of %d images (e.g. %s); their metadata is unknown",
                        self.source, len(missing), len(ids), missing[0])
        return {name: [None if row is None else row[name] for row in found] for name in self.fields}


def _unknown(raw: str | None) -> bool:
    return raw is None or raw.strip() == "" or raw.strip().lower() == UNKNOWN


def _parse_age(raw: str, where: str) -> float:
    try:
        age = float(raw)
    except ValueError:
        age = math.nan
    if not math.isfinite(age) or age < 0:
        raise DataError(f"{where}: age {raw!r} is neither a number of years nor {UNKNOWN!r}")
    return age


def _parse_sex(raw: str, where: str) -> str:
    sex = raw.strip().lower()
    if sex not in SEXES:
        raise DataError(f"{where}: sex {raw!r} is none of {', '.join(SEXES)} or {UNKNOWN!r}")
    return sex


def read_metadata_csv(path: str | Path, image_ids: Collection[str] | None = None) -> MetadataTable:
    """Read a metadata CSV (ISIC 2017 or HAM10000 columns, see the module docstring).

    Args:
        path: the CSV file.
        image_ids: lower-case ids of the images on disk; rows of other images are dropped (counted in a
            debug message). ``None`` keeps every row.

    Returns:
        the table of the rows kept.

    Raises:
        DataError: unreadable file, no ``image_id`` column, none of the metadata columns, an empty or
        repeated id, an age that is not a non-negative number or ``unknown``, a sex that is not
        ``female``/``male``/``unknown``. The message names the file and the line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable metadata CSV ({exc})") from None
    try:
        return _parse_metadata_csv(path, text, image_ids)
    except csv.Error as exc:  # e.g. a field beyond csv.field_size_limit()
        raise DataError(f"{path}: malformed metadata CSV ({exc})") from None


def _parse_metadata_csv(path: Path, text: str, image_ids: Collection[str] | None) -> MetadataTable:
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    if "image_id" not in columns:
        raise DataError(f"{path}: expected an image_id column, found {columns}")
    source = {name: next((c for c in names if c in columns), None) for name, names in COLUMNS.items()}
    fields = tuple(name for name in FIELDS if source[name] is not None)
    if not fields:
        expected = ", ".join(c for names in COLUMNS.values() for c in names)
        raise DataError(f"{path}: no metadata column (expected some of {expected}), found {columns}")
    reader.fieldnames = columns

    rows: dict[str, dict[str, Value]] = {}
    lines: dict[str, int] = {}
    dropped = 0
    for line, row in enumerate(reader, start=2):
        where = f"{path}: line {line}"
        image_id = (row.get("image_id") or "").strip()
        if not image_id:
            raise DataError(f"{where}: empty image_id")
        key = image_id.lower()
        if key in lines:
            raise DataError(f"{where}: {image_id} repeats the row of line {lines[key]}")
        lines[key] = line
        values: dict[str, Value] = {}
        for name in fields:
            raw = row.get(source[name])
            if _unknown(raw):
                values[name] = None
            elif name == AGE:
                values[name] = _parse_age(raw, where)
            elif name == SEX:
                values[name] = _parse_sex(raw, where)
            else:
                values[name] = raw.strip().lower()
        if image_ids is not None and key not in image_ids:
            dropped += 1
            continue
        rows[key] = values
    if dropped:
        log.debug("%s: %d rows name no image on disk, ignored", path, dropped)
    return MetadataTable(source=path, fields=fields, rows=rows)


def age_band(age: float | None) -> str | None:
    """The band of an age in years (see the module docstring): ``19 → "0-19"``, ``20 → "20-39"``,
    ``80 → "80+"``, ``None → None``."""
    if age is None:
        return None
    if age >= AGE_TOP_BAND:
        return f"{AGE_TOP_BAND}+"
    low = int(age // AGE_BAND_YEARS) * AGE_BAND_YEARS
    return f"{low}-{low + AGE_BAND_YEARS - 1}"


def group_labels(metadata: Mapping[str, Sequence[Value]] | None, by: str) -> list[str | None]:
    """Per image its subgroup for a breakdown of results.

    Args:
        metadata: ``{field: [value per image]}`` as stored in a cache
            (:attr:`dermogaze.data.cache.SplitArrays.metadata`); ``None`` for a cache without metadata.
        by: :data:`SEX` (``"female"``/``"male"``), :data:`AGE` (bands of :data:`AGE_BAND_YEARS`
            years, see the module docstring) or :data:`LOCALIZATION` (the body site as written).

    Returns:
        one label per image, ``None`` where the value is unknown.

    Raises:
        DermogazeError: ``by`` is not a field, or not one that ``metadata`` holds (the message lists
        those it holds).
    """
    available = [name for name in FIELDS if metadata is not None and name in metadata]
    if by not in available:
        held = ", ".join(available) if available else "none: the collection had no metadata CSV"
        what = "is not a metadata field" if by not in FIELDS else "is not in this cache's metadata"
        raise DermogazeError(f"{by!r} {what} (available: {held})")
    assert metadata is not None
    values = metadata[by]
    if by == AGE:
        return [age_band(v) for v in values]
    return [None if v is None else str(v) for v in values]
