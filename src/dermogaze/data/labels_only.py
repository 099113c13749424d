"""Diagnosis labels of the published ISIC collections, read from their CSV files (docs/design.md §2b).

:func:`read_labels` reads any of the label files below into one :class:`LabelTable`: image id →
melanoma (1, 0, or NaN when unknown), and where the file (or its companion) says so, the lesion of
each image and the patient's age, sex and body site (:mod:`dermogaze.data.metadata`). The format is
recognised from the columns (matched case-insensitively, surrounding spaces ignored), not from the
file name, so a renamed file reads the same.

Formats (:attr:`LabelTable.format`), the columns of the file as published, and what is a melanoma:

* ``generic``: ``image_id`` or ``isic_id`` with ``melanoma`` (0/1; melanoma = 1) or ``diagnosis``
  (text; melanoma = ``melanoma`` in any case); an optional ``lesion_id`` and metadata columns. An ISIC
  archive export, or the ISIC 2017 ``Part3_GroundTruth.csv``.
* ``isic2018_task3``: ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``, one-hot
  (``ISIC2018_Task3_Training_GroundTruth.csv``); melanoma = ``MEL``.
* ``isic2019``: ``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK``, one-hot
  (``ISIC_2019_Training_GroundTruth.csv``); melanoma = ``MEL``.
* ``ham10000``: ``lesion_id,image_id,dx,dx_type,age,sex,localization`` (``HAM10000_metadata.csv``);
  melanoma = ``dx`` ``mel``.
* ``isic2020``: ``image_name,patient_id,lesion_id,sex,age_approx,anatom_site_general_challenge,
  diagnosis,benign_malignant,target`` (``ISIC_2020_Training_GroundTruth_v2.csv``; Kaggle's
  ``train.csv`` lacks ``lesion_id``); melanoma = ``target``.

The one-hot files carry neither lesion ids nor patient data; their *companion*, published beside
them, does: :data:`COMPANIONS` lists the names looked for in the same folder (case-insensitively),
or pass one to :func:`read_labels`. Lesion ids matter: HAM10000 holds several images of one lesion,
and a split that puts them on both sides of train/test measures memory, not diagnosis
(:func:`dermogaze.data.splits.split_ids` keeps each lesion on one side).

Decisions where the challenges are silent:

* Ids are matched by :func:`dermogaze.data.metadata.image_key` (case-insensitive, an image suffix
  such as HAM10000's occasional ``.jpg`` dropped). A repeated id is always an error: there is no
  way to choose between its rows.
* Unknown diagnoses: an empty ``melanoma``/``target`` cell, and ``melanoma`` or ``diagnosis``
  written ``unknown``, are NaN (the image is unlabelled; ISIC 2018 Task 1-2 images used this way
  still train the structure terms). In the ISIC 2020 file the diagnosis ``unknown`` of a benign
  image is not read: ``target`` decides.
* Strict where a label would be wrong: a ``melanoma``/``target`` value other than 0 or 1 (``0.0`` and
  ``1.0`` accepted), a one-hot row that is not exactly one 1 and the rest 0, a HAM10000 ``dx``
  outside its seven codes, an empty id. Such a row is an error naming the file and line, or, with
  ``skip_bad``, left out and listed in :attr:`LabelTable.skipped` (a warning counts them).
* An empty ``lesion_id`` cell is an unknown lesion: the image is its own group when splitting.

:func:`read_image_collection` pairs a folder of images as published (flat, or split in parts such as
HAM10000's ``HAM10000_images_part_1``/``_part_2``: every image file under the folder counts) with a
label file, and divides it into train/val/test by :func:`dermogaze.data.splits.split_ids`, grouped
by lesion when lesion ids are known. The result is a classification-only collection (no masks) that
:func:`dermogaze.data.prepare.prepare` caches like an ISIC 2017 one. There, as in docs/design.md §2, a row
without an image, an image without a row and a bad row are bad samples (an error, or skipped and
counted with ``--skip-bad``); a row whose diagnosis is unknown is left out with a warning (without
masks or label it teaches nothing).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..files import CsvTable, parse_csv_file
from .isic2017 import BadSample, IsicCollection, IsicSample, IsicSplit
from .isic2018 import LAYOUT_PREFIXES as ISIC2018_PREFIXES
from .metadata import (
    ID_COLUMNS,
    IMAGE_SUFFIXES,
    UNKNOWN,
    MetadataTable,
    Value,
    image_key,
    metadata_columns,
    parse_metadata_row,
    read_metadata_csv,
    strip_image_suffix,
)
from .splits import SPLITS, check_fractions, split_ids

log = logging.getLogger(__name__)

MELANOMA_DIAGNOSIS = "melanoma"  # generic ``diagnosis`` text of a melanoma
HAM10000_MELANOMA = "mel"
HAM10000_DX = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")  # the seven diagnosis codes of HAM10000
#: One-hot format → its class columns (lower case, as matched).
ONE_HOT_CLASSES: dict[str, tuple[str, ...]] = {
    "isic2018_task3": ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"),
    "isic2019": ("mel", "nv", "bcc", "ak", "bkl", "df", "vasc", "scc", "unk"),
}
LESION_COLUMN = "lesion_id"

#: format → file names (lower case) of the companion looked for beside a label file of that format,
#: preferred first: the lesion groupings / metadata published with the one-hot ground truth.
COMPANIONS: dict[str, tuple[str, ...]] = {
    "isic2018_task3": ("isic2018_task3_training_lesiongroupings.csv", "ham10000_metadata.csv"),
    "isic2019": ("isic_2019_training_metadata.csv",),
}


@dataclass(frozen=True)
class LabelTable:
    """The diagnosis labels of one collection, in the order of its label file.

    Attributes:
        source: the label CSV.
        format: ``generic``, ``isic2018_task3``, ``isic2019``, ``ham10000`` or ``isic2020``.
        ids: image ids as written (an image suffix dropped), file order.
        melanoma: float64 ``(N,)``: 1 melanoma, 0 anything else, NaN unknown.
        lesion_ids: the lesion of each image (``None`` where unknown), or ``None`` when neither the
            file nor its companion has a ``lesion_id`` column.
        metadata: patient age/sex/body site from the file or its companion, or ``None``.
        skipped: bad rows left out under ``skip_bad`` (file, line and reason).
        skipped_ids: the image id written on each of them (``""`` when empty).
        companion: the companion CSV that was read, or ``None``.
    """

    source: Path
    format: str
    ids: tuple[str, ...]
    melanoma: np.ndarray
    lesion_ids: tuple[str | None, ...] | None
    metadata: MetadataTable | None
    skipped: tuple[BadSample, ...] = ()
    skipped_ids: tuple[str, ...] = ()
    companion: Path | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, str) and image_key(image_id) in self.index

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Image key (:func:`~dermogaze.data.metadata.image_key`) → row."""
        return {image_key(i): k for k, i in enumerate(self.ids)}

    def melanoma_of(self, ids: Sequence[str]) -> np.ndarray:
        """Melanoma labels aligned with ``ids``: float64 ``(len(ids),)``, NaN where unknown or without a row."""
        rows = [self.index.get(image_key(i)) for i in ids]
        return np.array([math.nan if k is None else self.melanoma[k] for k in rows], dtype=np.float64)

    def lesions_of(self, ids: Sequence[str]) -> list[str | None]:
        """Lesion ids aligned with ``ids``; ``None`` where unknown, without a row or without lesion ids."""
        if self.lesion_ids is None:
            return [None] * len(ids)
        rows = [self.index.get(image_key(i)) for i in ids]
        return [None if k is None else self.lesion_ids[k] for k in rows]


class _BadRow(Exception):
    """A row whose label cannot be read (message: what is wrong)."""


def _cell(row: dict[str, str | None], column: str) -> str:
    return (row.get(column) or "").strip()


def _zero_one(raw: str, column: str, unknown_ok: bool) -> float:
    """A 0/1 cell (``0.0``/``1.0`` accepted); empty or ``unknown`` is NaN when ``unknown_ok``."""
    if unknown_ok and raw.lower() in ("", UNKNOWN):
        return math.nan
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if value not in (0.0, 1.0):
        unknown = f"; empty or {UNKNOWN!r} when the diagnosis is unknown" if unknown_ok else ""
        raise _BadRow(f"{column} value {raw!r} is not 0 or 1 (accepted: 0, 1, 0.0, 1.0{unknown})")
    return value


def _generic_melanoma(columns: list[str]) -> Callable[[dict], float]:
    if "melanoma" in columns:
        return lambda row: _zero_one(_cell(row, "melanoma"), "melanoma", unknown_ok=True)

    def from_diagnosis(row: dict) -> float:
        text = _cell(row, "diagnosis").lower()
        return math.nan if text in ("", UNKNOWN) else float(text == MELANOMA_DIAGNOSIS)

    return from_diagnosis


def _one_hot_melanoma(classes: list[str]) -> Callable[[dict], float]:
    def read(row: dict) -> float:
        values = [_zero_one(_cell(row, c), c.upper(), unknown_ok=False) for c in classes]
        if sum(values) != 1:
            raise _BadRow(f"not one-hot ({', '.join(f'{c.upper()}={_cell(row, c)}' for c in classes)})")
        return values[classes.index("mel")]

    return read


def _ham10000_melanoma(row: dict) -> float:
    dx = _cell(row, "dx").lower()
    if dx not in HAM10000_DX:
        raise _BadRow(f"dx {dx!r} is none of {', '.join(HAM10000_DX)}")
    return float(dx == HAM10000_MELANOMA)


def _recognise(path: Path, columns: list[str]) -> tuple[str, str, Callable[[dict], float]]:
    """``(format, id column, row → melanoma)`` from the header, or a DataError listing what is expected."""
    if "image" in columns and "mel" in columns:
        classes = [c for c in columns if c not in ("image", LESION_COLUMN)]
        fmt = next((name for name, known in ONE_HOT_CLASSES.items() if sorted(known) == sorted(classes)), None)
        if fmt is None:
            expected = " or ".join(",".join(c.upper() for c in known) for known in ONE_HOT_CLASSES.values())
            raise DataError(f"{path}: one-hot columns {','.join(c.upper() for c in classes)} are neither {expected}")
        return fmt, "image", _one_hot_melanoma(classes)
    if "image_id" in columns and "dx" in columns:
        return "ham10000", "image_id", _ham10000_melanoma
    if "image_name" in columns and "target" in columns:
        return "isic2020", "image_name", lambda row: _zero_one(_cell(row, "target"), "target", unknown_ok=True)
    id_name = next((c for c in ("image_id", "isic_id") if c in columns), None)
    if id_name is not None and ("melanoma" in columns or "diagnosis" in columns):
        return "generic", id_name, _generic_melanoma(columns)
    raise DataError(
        f"{path}: not a label CSV this reader knows (found columns {columns[:12]}); expected image_id or isic_id "
        "with melanoma or diagnosis, or the columns of the ISIC 2018 Task 3, ISIC 2019, HAM10000 or ISIC 2020 "
        "ground truth"
    )


def _read_rows(path: Path, what: str) -> CsvTable:
    """A label or companion CSV, keyed by its image id column (:data:`~dermogaze.data.metadata.ID_COLUMNS`): a
    repeated image (:func:`~dermogaze.data.metadata.image_key`) is refused by the reader, naming both lines."""
    return parse_csv_file(path, what, key=ID_COLUMNS, same_key=image_key)


def _lesion(raw: str) -> str | None:
    return None if raw.lower() in ("", UNKNOWN) else raw


def _find_companion(path: Path, fmt: str) -> Path | None:
    wanted = COMPANIONS.get(fmt, ())
    if not wanted:
        return None
    present = {p.name.lower(): p for p in path.parent.iterdir() if p.is_file()}
    return next((present[name] for name in wanted if name in present), None)


def _read_companion(path: Path) -> tuple[dict[str, str | None] | None, MetadataTable | None]:
    """Lesion ids (image key → lesion or ``None``; ``None`` without the column) and metadata of a companion CSV."""
    table = _read_rows(path, "companion CSV")
    id_name = table.key
    if id_name is None:
        raise DataError(f"{path}: companion CSV without an image id column (found {list(table.columns[:12])})")
    lesions = None
    if LESION_COLUMN in table.columns:
        lesions = {image_key(_cell(row, id_name)): _lesion(_cell(row, LESION_COLUMN)) for _, row in table.rows}
    return lesions, read_metadata_csv(path, required=False)


def read_labels(
    path: str | Path, *, companion: str | Path | None = None, skip_bad: bool = False
) -> LabelTable:
    """Read a label CSV of any format of the module docstring.

    Args:
        path: the CSV file.
        companion: a CSV with ``lesion_id`` and/or patient metadata for the same images (an image id
            column of :data:`dermogaze.data.metadata.ID_COLUMNS`); by default the published companion
            of :data:`COMPANIONS` beside a one-hot file, when it is there. Its values fill what the
            label file lacks; the label file's own columns win.
        skip_bad: leave out and list bad rows instead of raising at the first.

    Returns:
        the table, in file order.

    Raises:
        DataError: unreadable file, unknown columns, a repeated id, a malformed companion or metadata
        value, or (without ``skip_bad``) a bad row; the message names the file and the line.
    """
    path = Path(path)
    csv_table = _read_rows(path, "label CSV")
    columns = list(csv_table.columns)
    fmt, id_name, melanoma_of = _recognise(path, columns)

    sources = metadata_columns(columns)
    ids: list[str] = []
    melanoma: list[float] = []
    lesions: list[str | None] = []
    patients: dict[str, dict[str, Value]] = {}
    skipped: list[BadSample] = []
    skipped_ids: list[str] = []
    for line, row in csv_table.rows:  # a repeated id was refused by the reader
        raw_id = _cell(row, id_name)
        try:
            if not raw_id:
                raise _BadRow(f"empty {id_name}")
            value = melanoma_of(row)
            values = parse_metadata_row(row, sources, where=f"line {line}: {raw_id}")
        except (_BadRow, DataError) as exc:
            reason = str(exc) if isinstance(exc, DataError) else f"line {line}: {raw_id + ': ' if raw_id else ''}{exc}"
            bad = BadSample(str(path), reason)
            if not skip_bad:
                raise bad.error() from None
            skipped.append(bad)
            skipped_ids.append(raw_id)
            continue
        key = image_key(raw_id)
        ids.append(strip_image_suffix(raw_id))
        melanoma.append(value)
        lesions.append(_lesion(_cell(row, LESION_COLUMN)))
        patients[key] = values
    if skipped:
        log.warning("%s: %d bad rows left out (e.g. %s)", path, len(skipped), skipped[0].reason)

    lesion_ids: tuple[str | None, ...] | None = tuple(lesions) if LESION_COLUMN in columns else None
    metadata = MetadataTable(source=path, fields=tuple(sources), rows=patients) if sources else None
    companion = Path(companion) if companion is not None else _find_companion(path, fmt)
    if companion is not None:
        extra_lesions, extra_metadata = _read_companion(companion)
        if lesion_ids is None and extra_lesions is not None:
            lesion_ids = tuple(extra_lesions.get(image_key(i)) for i in ids)
        metadata = metadata or extra_metadata
        log.info("%s: lesion ids and metadata from %s", path, companion)
    table = LabelTable(
        source=path, format=fmt, ids=tuple(ids), melanoma=np.asarray(melanoma, dtype=np.float64),
        lesion_ids=lesion_ids, metadata=metadata, skipped=tuple(skipped), skipped_ids=tuple(skipped_ids),
        companion=companion,
    )
    log.info("%s (%s): %d images, %d melanoma, %d unknown", path, fmt, len(table),
             int(np.nansum(table.melanoma)), int(np.isnan(table.melanoma).sum()))
    return table


#: Layout name of a folder of images with a label file (``IsicCollection.layout``).
IMAGES_LAYOUT = "images"
#: Top-level folder names (lower case) of the ISIC challenge layouts that have readers of their own.
_CHALLENGE_PREFIXES = ("isic-2017_", *ISIC2018_PREFIXES)


def is_image_folder(root: str | Path) -> bool:
    """Whether ``root`` is a folder that is not an ISIC 2017 or 2018 Task 1-2 layout (no top-level
    ``ISIC-2017_*`` / ``ISIC2018_Task1*`` / ``ISIC2018_Task2_*`` entry): what ``prepare --labels`` reads as
    images. (ISIC 2018 Task 3's ``ISIC2018_Task3_Training_Input`` is such a folder of images.)"""
    root = Path(root)
    return root.is_dir() and not any(p.name.lower().startswith(_CHALLENGE_PREFIXES) for p in root.iterdir())


def _image_files(root: Path) -> dict[str, Path]:
    """Every visible image file under ``root`` (any depth), keyed by :func:`image_key` of its name."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if any(part.startswith(".") for part in parts) or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if not path.is_file():
            continue
        key = image_key(path.name)
        if key in found:
            raise DataError(f"{path}: a second image of {path.stem} (first: {found[key]})")
        found[key] = path
    return found


def _why_no_sample(table: LabelTable, root: Path, images: dict[str, Path], unlabelled: int) -> str:
    """Why no row of ``table`` gives a known diagnosis to an image of ``root``, every cause counted and
    exemplified, for the one line of the error."""
    causes = []
    if table.skipped:
        causes.append(f"{len(table.skipped)} rows refused (e.g. {table.skipped[0].reason})")
    if unlabelled:
        causes.append(f"{unlabelled} rows of an image have an unknown diagnosis")
    unmatched = [i for i in table.ids if image_key(i) not in images]
    if unmatched:
        example = next(iter(images.values())).name
        causes.append(f"{len(unmatched)} rows name no image there (e.g. {unmatched[0]}; the folder holds "
                      f"{len(images)} images, e.g. {example})")
    if not causes:
        causes.append("the file has no rows")
    return f"{table.source}: no row gives a known diagnosis to an image in {root}: {'; '.join(causes)}"


def read_image_collection(
    root: str | Path, labels: str | Path, *, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> IsicCollection:
    """A folder of images and its label file as a classification-only collection split into train/val/test.

    Args:
        root: the image folder (searched at any depth).
        labels: a label CSV of any format of the module docstring (its companion is found beside it).
        fractions: train, val, test (:func:`dermogaze.data.splits.check_fractions`); a split of fraction
            0 is left out.
        seed: of the split.

    Returns:
        the collection (``layout`` :data:`IMAGES_LAYOUT`, no masks); each split's ``official`` says
        how it was drawn; the bad rows and unpaired files are the ``problems`` of the train split.

    Raises:
        DataError: ``root`` missing or without images, no row that gives an image a known diagnosis (the
        message says why), two images of one id, an unreadable or unknown label CSV, a
        repeated id; DermogazeError: bad fractions or too few images to split.
    """
    root = Path(root)
    fractions = check_fractions(fractions)
    if not root.is_dir():
        raise DataError(f"{root}: image folder does not exist")
    table = read_labels(labels, skip_bad=True)  # the cache raises or skips each problem (--skip-bad)
    images = _image_files(root)
    if not images:
        raise DataError(f"no images in {root} (looked for {', '.join(IMAGE_SUFFIXES)} files in it and its subfolders)")
    problems = list(table.skipped)
    samples: list[IsicSample] = []
    unlabelled = 0
    for image_id, value in zip(table.ids, table.melanoma, strict=True):
        image = images.get(image_key(image_id))
        if image is None:
            problems.append(BadSample(str(table.source), f"row {image_id} has no image ({image_id}.jpg) in {root}"))
        elif np.isnan(value):
            unlabelled += 1
        else:
            samples.append(IsicSample(id=image_id, label=int(value), image=image))
    for key in sorted(set(images) - set(table.index) - {image_key(i) for i in table.skipped_ids}):
        problems.append(BadSample(str(images[key]), f"image has no row in {table.source}"))
    if unlabelled:
        log.warning("%s: %d images without a known diagnosis left out", table.source, unlabelled)
    if not samples:
        raise DataError(_why_no_sample(table, root, images, unlabelled))

    ids = [s.id for s in samples]
    grouped = table.lesion_ids is not None
    parts = split_ids(ids, [s.label for s in samples], table.lesions_of(ids) if grouped else None,
                      fractions=fractions, seed=seed)
    by_id = {s.id: s for s in samples}
    how = f"of {table.source.name}, seed {seed}, " + ("grouped by lesion_id" if grouped else "no lesion ids")
    splits: dict[str, IsicSplit] = {}
    for name, fraction in zip(SPLITS, fractions, strict=True):
        if fraction == 0:
            continue
        split = IsicSplit(name=name, official=f"{fraction:.0%} {how}", data_dir=root, csv=table.source,
                          part1_dir=None, part2_dir=None, metadata_csv=table.companion, metadata=table.metadata)
        split.samples = [by_id[i] for i in parts[name]]
        split.problems = problems if name == "train" else []  # reported once
        splits[name] = split
        log.info("%s: %d images (%d melanoma)", name, len(split.samples), sum(s.label for s in split.samples))
    return IsicCollection(root=root, splits=splits, has_part1=False, has_part2=False, layout=IMAGES_LAYOUT)
