"""Patient metadata (age, sex, body site) of a collection, and the subgroups evaluation reports.

The model never sees these values; they travel from the collection into the cache
(``<split>/metadata.json``, see :mod:`dermogaze.data.cache`) so that results can be broken down by
patient subgroup.

Accepted CSV columns (matched case-insensitively, surrounding spaces ignored):

======================  ===========================================================
ISIC 2017               ``image_id,age_approximate,sex``  (``ISIC-2017_<split>_Data_metadata.csv``)
HAM10000                ``lesion_id,image_id,dx,dx_type,age,sex,localization``
ISIC 2019               ``image,age_approx,anatom_site_general,lesion_id,sex``
ISIC 2020               ``image_name,patient_id,lesion_id,sex,age_approx,anatom_site_general_challenge,...``
ISIC archive            ``isic_id,...,age_approx,sex,anatom_site_general,...``
======================  ===========================================================

The image id comes from the first of :data:`ID_COLUMNS` that exists; an image suffix written with it
(HAM10000 sometimes carries ``.jpg``) is dropped (:func:`image_key`). A field is stored when one of
its :data:`COLUMNS` exists: :data:`AGE` from ``age_approximate``, ``age_approx`` or ``age``,
:data:`SEX` from ``sex``, :data:`LOCALIZATION` from ``localization`` or the ISIC 2019/2020 body-site
column; other columns are ignored. Values ``unknown`` (any case), empty and missing cells are ``None``.
Ages are floats in years from 0 to :data:`MAX_AGE_YEARS` (ISIC gives multiples of 5); sex is
``"female"`` or ``"male"``; a body site is kept as written, in lower case.

Subgroups (:func:`group_labels`): sex and body site are their own values; ages fall into bands of
:data:`AGE_BAND_YEARS` years, ``[20k, 20k + 20)`` labelled ``"20k-(20k+19)"`` (``"0-19"``,
``"20-39"``, ``"40-59"``, ``"60-79"``), and every age from :data:`AGE_TOP_BAND` on is one band,
``"80+"``. So 19 and 19.9 are ``"0-19"``, 20 is ``"20-39"``, 79.9 is ``"60-79"``, 80 and 95 are
``"80+"``. The labels sort in age order as strings.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, DermogazeError
from ..files import parse_csv_file

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
#: The oldest plausible age in years (the oldest recorded human lived 122 years): an age outside
#: ``[0, MAX_AGE_YEARS]`` is a mistake in the file (another column, months, a typo) and is refused.
MAX_AGE_YEARS = 120

SEXES = ("female", "male")
#: CSV column(s) of each field, preferred first.
COLUMNS: dict[str, tuple[str, ...]] = {
    AGE: ("age_approximate", "age_approx", "age"),
    SEX: ("sex",),
    LOCALIZATION: ("localization", "anatom_site_general_challenge", "anatom_site_general"),
}
#: Columns that name the image, preferred first (ISIC 2017 / HAM10000, ISIC archive, ISIC 2020, ISIC 2018-2019).
ID_COLUMNS = ("image_id", "isic_id", "image_name", "image")
#: Suffixes that :func:`image_key` drops from an id written as a file name.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
UNKNOWN = "unknown"

Value = float | str | None


@dataclass(frozen=True)
class MetadataTable:
    """The rows of one metadata CSV.

    Attributes:
        source: the CSV file.
        fields: the fields its columns hold, in :data:`FIELDS` order.
        rows: image key (:func:`image_key`) → ``{field: value or None}``.
    """

    source: Path
    fields: tuple[str, ...]
    rows: dict[str, dict[str, Value]]

    def columns(self, ids: Sequence[str]) -> dict[str, list[Value]]:
        """``{field: [value per id]}`` aligned with ``ids``; ``None`` where unknown or without a row.

        Ids are matched by :func:`image_key`; images without a row are counted in a warning.
        """
        found = [self.rows.get(image_key(i)) for i in ids]
        missing = [i for i, row in zip(ids, found, strict=True) if row is None]
        if missing:
            log.warning("%s: no row for %d of %d images (e.g. %s); their metadata is unknown",
                        self.source, len(missing), len(ids), missing[0])
        return {name: [None if row is None else row[name] for row in found] for name in self.fields}


def strip_image_suffix(image_id: str) -> str:
    """An id without surrounding spaces and without an image suffix of any case (``"ISIC_1.JPG" → "ISIC_1"``)."""
    image_id = image_id.strip()
    suffix = next((s for s in IMAGE_SUFFIXES if image_id.lower().endswith(s)), "")
    return image_id[: len(image_id) - len(suffix)]


def image_key(image_id: str) -> str:
    """The key that matches an image id to its file and to its rows in every CSV: stripped, lower case,
    without an image suffix (``" ISIC_0024306.JPG" → "isic_0024306"``)."""
    return strip_image_suffix(image_id).lower()


def _unknown(raw: str | None) -> bool:
    return raw is None or raw.strip() == "" or raw.strip().lower() == UNKNOWN


def _parse_age(raw: str, where: str) -> float:
    try:
        age = float(raw)
    except ValueError:
        age = math.nan
    if not (math.isfinite(age) and 0 <= age <= MAX_AGE_YEARS):
        raise DataError(f"{where}: age {raw!r} is not a number of years from 0 to {MAX_AGE_YEARS} (nor {UNKNOWN!r})")
    return age


def _parse_sex(raw: str, where: str) -> str:
    sex = raw.strip().lower()
    if sex not in SEXES:
        raise DataError(f"{where}: sex {raw!r} is none of {', '.join(SEXES)} or {UNKNOWN!r}")
    return sex


def metadata_columns(columns: Sequence[str]) -> dict[str, str]:
    """``{field: CSV column}`` for each field of :data:`FIELDS` that one of the lower-case ``columns`` holds."""
    found = {name: next((c for c in COLUMNS[name] if c in columns), None) for name in FIELDS}
    return {name: column for name, column in found.items() if column is not None}


def parse_metadata_row(row: Mapping[str, str | None], columns: Mapping[str, str], where: str) -> dict[str, Value]:
    """The metadata values of one CSV row.

    Args:
        row: the row, keyed by lower-case column.
        columns: :func:`metadata_columns` of the header.
        where: ``"<file>: line <n>"`` for the error message.

    Raises:
        DataError: an age that is not a number of years in ``[0, MAX_AGE_YEARS]``, a sex that is not
        ``female``/``male`` (``unknown`` and empty cells are ``None``).
    """
    values: dict[str, Value] = {}
    for name, column in columns.items():
        raw = row.get(column)
        if _unknown(raw):
            values[name] = None
        elif name == AGE:
            values[name] = _parse_age(raw, where)
        elif name == SEX:
            values[name] = _parse_sex(raw, where)
        else:
            values[name] = raw.strip().lower()
    return values


def read_metadata_csv(
    path: str | Path, image_ids: Collection[str] | None = None, *, required: bool = True
) -> MetadataTable | None:
    """Read a metadata CSV (the columns of the module docstring).

    Args:
        path: the CSV file.
        image_ids: keys (:func:`image_key`) of the images on disk; rows of other images are dropped
            (counted in a debug message). ``None`` keeps every row.
        required: without any metadata column, raise (``True``) or return ``None`` (``False``: a label
            CSV that may or may not carry metadata).

    Returns:
        the table of the rows kept (``None`` only when not ``required``).

    Raises:
        DataError: unreadable file, no image id column (:data:`ID_COLUMNS`), none of the metadata
        columns (when ``required``), an empty or repeated id, an age that is not a number of years in
        ``[0, MAX_AGE_YEARS]`` or ``unknown``, a sex that is not ``female``/``male``/``unknown``. The
        message names the file and the line.
    """
    path = Path(path)
    table = parse_csv_file(path, "metadata CSV", key=ID_COLUMNS, same_key=image_key)
    columns = list(table.columns)
    id_name = table.key
    if id_name is None:
        raise DataError(f"{path}: expected an image_id column (or {', '.join(ID_COLUMNS[1:])}), found {columns}")
    source = metadata_columns(columns)
    fields = tuple(source)
    if not fields and not required:
        return None
    if not fields:
        expected = ", ".join(c for names in COLUMNS.values() for c in names)
        raise DataError(f"{path}: no metadata column (expected some of {expected}), found {columns}")

    rows: dict[str, dict[str, Value]] = {}
    dropped = 0
    for line, row in table.rows:
        where = f"{path}: line {line}"
        image_id = row[id_name].strip()
        if not image_id:
            raise DataError(f"{where}: empty {id_name}")
        key = image_key(image_id)
        values = parse_metadata_row(row, source, where)
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
