"""Reader of the official ISIC 2017 layout (docs/design.md §2): images, superpixels, features, masks, labels.

A collection on disk holds, per official split (``Training``, ``Validation``, ``Test_v2`` or
``Test``)::

    ISIC-2017_<split>_Data/ISIC_<id>.jpg                 lesion image
    ISIC-2017_<split>_Data/ISIC_<id>_superpixels.png     RGB superpixel label map
    ISIC-2017_<split>_Part1_GroundTruth/ISIC_<id>_segmentation.png
    ISIC-2017_<split>_Part2_GroundTruth/ISIC_<id>_features.json
    ISIC-2017_<split>_Part3_GroundTruth.csv              image_id,melanoma,seborrheic_keratosis
    ISIC-2017_<split>_Data/ISIC-2017_<split>_Data_metadata.csv   image_id,age_approximate,sex (optional)

:func:`read_collection` finds the splits and pairs every CSV row with its files; the ``read_*``
functions decode one annotation file each (pictures through
:func:`dermogaze.data.images.read_image_file`); :func:`decode_superpixels`, :func:`feature_masks`
and :func:`build_masks` turn the decoded files into the six structure masks of docs/design.md §1
(Eqs. 17-19).

Decisions where docs/design.md and the paper are silent:

* Images may be ``.jpg``, ``.jpeg`` or ``.png`` in any letter case; annotation suffixes
  (``_segmentation.png``, ``_superpixels.png``, ``_features.json``) and folder names are matched
  case-insensitively. CSV ids are matched to file names case-insensitively.
* Files that are not samples (``.DS_Store``, a licence text…) are ignored; an image file without a
  CSV row is a bad sample, an annotation file without an image only a warning (it cannot become a
  sample, so nothing is dropped).
* The metadata CSV (patient age and sex, :mod:`dermogaze.data.metadata`) is looked for in the Data
  folder, innermost level first when it is nested, its name matched case-insensitively; a split
  without one simply has no metadata.
* Masks need both Part 1 and Part 2. A collection with neither is *classification-only*. One with
  only one of the two parts is treated as classification-only too, with a warning. When any split
  has Part 1 and Part 2, every split must: the samples of a split whose annotation folder is missing
  are bad samples (the error names the missing folder).
* Images, lesion masks and superpixel maps are read on their stored pixel grid: an EXIF
  orientation tag is not applied (it would turn an image away from its annotations).
* Lesion masks are binarised at 128 (ground truth is 0/255). A CSV value ``>= 0.5`` counts as 1.
* A feature value must be a JSON number in [0, 1]: booleans, numeric strings, ``NaN``, infinities
  and numbers outside the range make the sample bad (nothing is coerced or clipped).
* If both ``Test_v2`` and ``Test`` exist, ``Test_v2`` (the official name) is used, with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..files import check_file_kind, parse_csv_file
from ..structures import DERMOSCOPIC_FEATURES, ISIC2017_STRUCTURES
from .images import read_image_file
from .metadata import MetadataTable, read_metadata_csv

log = logging.getLogger(__name__)

#: Cache split name → official folder names, preferred first.
OFFICIAL_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("Training",),
    "val": ("Validation",),
    "test": ("Test_v2", "Test"),
}

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SUPERPIXELS_SUFFIX = "_superpixels.png"
SEGMENTATION_SUFFIX = "_segmentation.png"
FEATURES_SUFFIX = "_features.json"


@dataclass(frozen=True)
class BadSample:
    """A sample that cannot be used: the file at fault and what is wrong with it."""

    file: str
    reason: str

    def error(self) -> DataError:
        return DataError(f"{self.file}: {self.reason}")

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "reason": self.reason}


@dataclass(frozen=True)
class IsicSample:
    """The files of one image. Annotation paths are ``None`` in a classification-only collection.

    An ISIC 2018 Task 1-2 sample (:mod:`dermogaze.data.isic2018`) has ``attributes`` (one pixel mask
    per dermoscopic structure, in the collection's order) instead of ``superpixels`` and ``features``,
    and ``label`` ``None`` when its diagnosis is unknown.
    """

    id: str
    label: int | None  # 1 = melanoma, 0 = anything else, None = unknown
    image: Path
    superpixels: Path | None = None
    segmentation: Path | None = None
    features: Path | None = None
    attributes: tuple[Path, ...] | None = None


@dataclass
class IsicSplit:
    """One official split: its folders, its usable samples and the bad samples found on disk."""

    name: str  # cache name: train / val / test
    official: str  # Training / Validation / Test_v2 / Test
    data_dir: Path
    csv: Path | None  # the label CSV (None: ISIC 2018 Task 1-2, whose labels come from elsewhere)
    part1_dir: Path | None
    part2_dir: Path | None
    metadata_csv: Path | None = None
    samples: list[IsicSample] = field(default_factory=list)
    problems: list[BadSample] = field(default_factory=list)
    metadata: MetadataTable | None = None  # the rows of metadata_csv whose image is on disk


@dataclass
class IsicCollection:
    """All splits of a collection and which annotations it holds."""

    root: Path
    splits: dict[str, IsicSplit]  # cache split name → split, in train/val/test order
    has_part1: bool
    has_part2: bool
    layout: str = "isic2017"  # or "isic2018" (Task 1-2 pixel masks, no superpixels)
    structures: tuple[str, ...] = ISIC2017_STRUCTURES  # the structure set of the masks, in their order

    @property
    def has_masks(self) -> bool:
        """Part 1 (lesion) and Part 2 (features + superpixels, or 2018 attribute masks) are both available."""
        return self.has_part1 and self.has_part2

    @property
    def has_superpixels(self) -> bool:
        """Superpixel maps are read (ISIC 2017 only, together with Part 2, whose values they index)."""
        return self.has_masks and self.layout == "isic2017"


# --------------------------------------------------------------------------------------------
# Decoding single files
# --------------------------------------------------------------------------------------------


def decode_superpixels(rgb: np.ndarray) -> np.ndarray:
    """Official ISIC 2017 superpixel decoding: ``index = R + (G << 8) + (B << 16)``.

    Computed in uint32 so that indices above 255 (the normal case, ~1000 superpixels per image)
    and above 65535 are exact. (The authors' code multiplies by 255 instead of 256, which merges
    distinct superpixels; this is the official 256-based decoding.)

    Args:
        rgb: the superpixel PNG as an integer array.

    Returns:
        uint32 index map.

    Shape:
        ``(H, W, 3)`` → ``(H, W)``.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"superpixel map must have shape (H, W, 3), got {rgb.shape}")
    if rgb.dtype != np.uint8:
        if not np.issubdtype(rgb.dtype, np.integer) or rgb.min(initial=0) < 0 or rgb.max(initial=0) > 255:
            raise ValueError("superpixel map must hold 8-bit integer channel values")
        rgb = rgb.astype(np.uint8)
    # In place on one uint32 array (a 6000×4000 map would need 3× the memory as a (H, W, 3) uint32 copy).
    index = rgb[..., 2].astype(np.uint32)  # B
    index <<= np.uint32(8)
    index |= rgb[..., 1]  # G
    index <<= np.uint32(8)
    index |= rgb[..., 0]  # R
    return index  # R + (G << 8) + (B << 16)


def read_lesion_mask(path: Path) -> np.ndarray:
    """Read a Part 1 lesion segmentation (0/255 greyscale PNG) as a bool mask ``(H, W)``.

    Pixels ``>= 128`` are lesion. Other modes are converted to greyscale first by the rules of
    :mod:`dermogaze.data.images` (16-bit masks by their high byte), transparency dropped; the stored
    pixel grid is kept (no EXIF orientation), as for every file of the collection.

    Raises:
        DataError: missing or unreadable file.
    """
    return read_image_file(path, "L", exif_orientation=False, annotation=True, what="lesion mask") >= 128


def read_superpixels(path: Path) -> np.ndarray:
    """Read an ISIC 2017 ``_superpixels.png`` and decode it (:func:`decode_superpixels`).

    Returns:
        uint32 index map ``(H, W)``.

    Raises:
        DataError: missing or unreadable file, or not an RGB image (a greyscale map cannot hold the
        official encoding).
    """
    rgb = read_image_file(
        path, "RGB", exif_orientation=False, annotation=True, source_modes=("RGB", "RGBA", "P"), what="superpixel map"
    )  # (H, W, 3)
    return decode_superpixels(rgb)


def _brief(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters (a bad value may be a long string or a nested object)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _feature_values(path: Path, name: str, values: object) -> np.ndarray:
    """One feature's list as float64, every entry a JSON number in [0, 1] (not a boolean, a string, NaN or inf)."""
    if not isinstance(values, list):
        raise DataError(f"{path}: feature {name!r} must be a list of numbers in [0, 1], got {type(values).__name__}")
    array = None
    if {type(v) for v in values} <= {int, float}:  # JSON numbers only (type() excludes bool)
        with contextlib.suppress(OverflowError):  # an integer beyond float range
            array = np.asarray(values, dtype=np.float64)
    if array is None or not ((array >= 0.0) & (array <= 1.0)).all():  # NaN fails both comparisons
        i, bad = next((i, v) for i, v in enumerate(values) if type(v) not in (int, float) or not 0 <= v <= 1)
        raise DataError(f"{path}: feature {name!r}: value {_brief(bad)} at position {i} is not a number in [0, 1]")
    return array


def read_features(path: Path) -> dict[str, np.ndarray]:
    """Read a Part 2 ``_features.json``: one value in [0, 1] per superpixel for each feature.

    Every value must be a JSON number in [0, 1]: booleans, strings, ``NaN``, infinities and numbers
    outside the range are errors (they would silently change the masks and the Task 2 AUC).

    Returns:
        ``{feature: float64 array (n_superpixels,)}`` for the four :data:`DERMOSCOPIC_FEATURES`.

    Raises:
        DataError: unreadable JSON, a missing feature, a value that is not a number in [0, 1] (the
        message names the feature and the position), or lists of different lengths.
    """
    check_file_kind(path, "Part 2 features file", "give the collection's _features.json file")
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise DataError(f"{path}: unreadable features JSON ({exc.__class__.__name__}: {_brief(str(exc))})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object of feature lists, got {type(data).__name__}")
    out: dict[str, np.ndarray] = {}
    for name in DERMOSCOPIC_FEATURES:
        if name not in data:
            keys = ", ".join(_brief(k) for k in list(data)[:8]) + (", ..." if len(data) > 8 else "")
            raise DataError(f"{path}: feature {name!r} missing (keys: {keys})")
        out[name] = _feature_values(path, name, data[name])
    lengths = {name: len(v) for name, v in out.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"{path}: feature lists have different lengths {lengths}")
    return out


def read_labels_csv(path: Path) -> tuple[list[tuple[str, float | None]], list[BadSample]]:
    """Read a Part 3 ground-truth CSV (``image_id,melanoma,seborrheic_keratosis``, float values).

    Returns:
        ``(rows, problems)``: ``rows`` lists ``(image_id, melanoma value)`` in file order (value
        ``None`` when it is not a number in [0, 1]; such a row also appears in ``problems``).

    Raises:
        DataError: unreadable file, missing ``image_id``/``melanoma`` column, or a repeated id.
    """
    table = parse_csv_file(path, "label CSV", key="image_id", same_key=str.lower)
    if "image_id" not in table.columns or "melanoma" not in table.columns:
        raise DataError(f"{path}: expected columns image_id and melanoma, found {_brief(list(table.columns), 200)}")
    rows: list[tuple[str, float | None]] = []
    problems: list[BadSample] = []
    for line, row in table.rows:  # a repeated id was refused by the reader
        image_id = row["image_id"].strip()
        if not image_id:
            problems.append(BadSample(str(path), f"line {line}: empty image_id"))
            continue
        raw = (row.get("melanoma") or "").strip()
        try:
            value: float | None = float(raw)
        except ValueError:
            value = None
        if value is None or not 0.0 <= value <= 1.0:
            problems.append(BadSample(str(path), f"line {line}: melanoma value {raw!r} of {image_id} is not in [0, 1] "
                                              "(the challenge's files write 0.0 or 1.0)"))
            value = None
        rows.append((image_id, value))
    return rows, problems


# --------------------------------------------------------------------------------------------
# Masks (docs/design.md §1, Eqs. 17-19)
# --------------------------------------------------------------------------------------------


def feature_masks(
    index_map: np.ndarray, features: Mapping[str, np.ndarray], *, source: str = "superpixel map"
) -> dict[str, np.ndarray]:
    """Pixel masks of the dermoscopic features: ``np.asarray(values)[index_map] >= 0.5``.

    Args:
        index_map: decoded superpixel indices ``(H, W)``.
        features: ``{feature: values per superpixel}`` as returned by :func:`read_features`.
        source: names the files in the error message.

    Returns:
        ``{feature: bool (H, W)}``.

    Raises:
        DataError: a superpixel index has no value in the feature lists.
    """
    n = min(len(np.asarray(v)) for v in features.values())
    top = int(index_map.max(initial=0))
    if top >= n:
        raise DataError(f"{source}: superpixel index {top} is beyond the {n} values of the features JSON")
    return {name: np.asarray(values)[index_map] >= 0.5 for name, values in features.items()}


def build_masks(
    lesion: np.ndarray, features: Mapping[str, np.ndarray], names: tuple[str, ...] = DERMOSCOPIC_FEATURES
) -> np.ndarray:
    """The structure masks of docs/design.md §1: lesion', skin, then ``features`` in the order of ``names``.

    ``M_dermo = M_pig OR M_neg OR M_mil OR M_str`` (Eq. 17); ``M_skin = NOT(M_lesion OR M_dermo)``
    (Eq. 18); ``M'_lesion = NOT(M_skin OR M_dermo)`` (Eq. 19), i.e. a pixel of the lesion that holds
    a dermoscopic structure is not "lesion", and skin is everything else.

    Args:
        lesion: Part 1 lesion mask, bool ``(H, W)``.
        features: ``{feature: bool (H, W)}`` for every name of ``names``.
        names: the dermoscopic structures of the set, in its order: the four ISIC 2017
            :data:`DERMOSCOPIC_FEATURES` (default) or the five ISIC 2018 attributes (``M_dermo`` is
            then the union of five masks).

    Returns:
        bool array ``(2 + len(names), H, W)``; for ISIC 2017: lesion', skin, pigment network,
        negative network, milia-like cysts, streaks.
    """
    lesion = np.asarray(lesion, dtype=bool)
    missing = [name for name in names if name not in features]
    if missing:
        raise ValueError(f"build_masks needs the features {missing}")
    dermo_list = [np.asarray(features[name], dtype=bool) for name in names]
    for name, m in zip(names, dermo_list, strict=True):
        if m.shape != lesion.shape:
            raise ValueError(f"feature mask {name} has shape {m.shape}, lesion mask {lesion.shape}")
    dermo = np.logical_or.reduce(dermo_list)  # Eq. 17
    skin = ~(lesion | dermo)  # Eq. 18
    lesion_prime = ~(skin | dermo)  # Eq. 19
    return np.stack([lesion_prime, skin, *dermo_list])  # (2 + F, H, W), the set's order


# --------------------------------------------------------------------------------------------
# Finding the files of a collection
# --------------------------------------------------------------------------------------------


def _entries(folder: Path) -> dict[str, Path]:
    """Visible entries of a folder keyed by lower-case name."""
    return {p.name.lower(): p for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def _unnest(folder: Path) -> Path:
    """``X/X/...`` (a zip unpacked into a folder of its own name) → the innermost ``X``."""
    while True:
        inner = _entries(folder).get(folder.name.lower())
        if inner is None or not inner.is_dir():
            return folder
        folder = inner


def _index(folder: Path | None, suffixes: tuple[str, ...], exclude: tuple[str, ...] = ()) -> dict[str, Path]:
    """Entries of ``folder`` but folders whose lower-case name ends with one of ``suffixes`` → {lower id: path}
    (a FIFO or a device so named is indexed, for its reader to name it as what it is)."""
    found: dict[str, Path] = {}
    if folder is None:
        return found
    for name, path in _entries(folder).items():
        if path.is_dir() or name.endswith(exclude):
            continue
        for suffix in suffixes:
            if name.endswith(suffix):
                key = name[: -len(suffix)]
                if key in found:
                    raise DataError(f"{path}: a second file for {key} (first: {found[key].name})")
                found[key] = path
                break
    return found


def _find_metadata_csv(data_dir: Path, prefix: str) -> Path | None:
    """``<prefix>_Data_metadata.csv`` in a Data folder: the innermost level of a nested one first."""
    wanted = f"{prefix}_Data_metadata.csv".lower()
    levels = [data_dir]  # data_dir, data_dir/<same name>, ... as _unnest walks them
    while (inner := _entries(levels[-1]).get(levels[-1].name.lower())) is not None and inner.is_dir():
        levels.append(inner)
    for folder in reversed(levels):
        path = _entries(folder).get(wanted)
        if path is not None and path.is_file():
            return path
    return None


def _find_split(root: Path, entries: dict[str, Path], name: str) -> IsicSplit | None:
    candidates = []
    for official in OFFICIAL_SPLITS[name]:
        prefix = f"ISIC-2017_{official}"
        parts = {
            "data": entries.get(f"{prefix}_Data".lower()),
            "part1": entries.get(f"{prefix}_Part1_GroundTruth".lower()),
            "part2": entries.get(f"{prefix}_Part2_GroundTruth".lower()),
            "csv": entries.get(f"{prefix}_Part3_GroundTruth.csv".lower()),
        }
        if any(p is not None for p in parts.values()):
            candidates.append((official, prefix, parts))
    if not candidates:
        return None
    official, prefix, parts = candidates[0]
    if len(candidates) > 1:
        log.warning("%s: both %s and %s exist; using %s", root, candidates[0][0], candidates[1][0], official)
    if parts["data"] is None or not parts["data"].is_dir():
        raise DataError(f"{root / (prefix + '_Data')}: folder missing (the {official} split has other files)")
    what = f"label CSV of the {official} split"
    if parts["csv"] is None or not check_file_kind(parts["csv"], what, "give the Part 3 ground-truth CSV").is_file():
        raise DataError(f"{root / (prefix + '_Part3_GroundTruth.csv')}: label CSV of the {official} split missing")
    dirs = {k: _unnest(parts[k]) if parts[k] is not None and parts[k].is_dir() else None for k in ("part1", "part2")}
    return IsicSplit(
        name=name,
        official=official,
        data_dir=_unnest(parts["data"]),
        csv=parts["csv"],
        part1_dir=dirs["part1"],
        part2_dir=dirs["part2"],
        metadata_csv=_find_metadata_csv(parts["data"], prefix),
    )


def read_collection(root: str | Path) -> IsicCollection:
    """Find the splits of an ISIC 2017 collection and pair every CSV row with its files.

    Args:
        root: folder holding the unzipped ``ISIC-2017_*`` folders and CSV files.

    Returns:
        the collection; each split lists its usable samples (in CSV order), its bad samples
        (``problems``: a CSV row without an image or annotation file, an image without a row, a
        missing annotation folder, a label that is not a number) and its patient ``metadata``
        (``None`` without a metadata CSV).

    Raises:
        DataError: ``root`` missing, no split found, a split without its Data folder or CSV, a
        CSV without ``image_id``/``melanoma`` columns or with repeated ids, a malformed metadata
        CSV (:func:`dermogaze.data.metadata.read_metadata_csv`).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: ISIC folder does not exist")
    entries = _entries(root)
    splits: dict[str, IsicSplit] = {}
    for name in OFFICIAL_SPLITS:
        split = _find_split(root, entries, name)
        if split is not None:
            splits[name] = split
    if not splits:
        raise DataError(
            f"{root}: no ISIC 2017 split found (expected e.g. ISIC-2017_Training_Data/ and "
            "ISIC-2017_Training_Part3_GroundTruth.csv)"
        )
    has_part1 = any(s.part1_dir is not None for s in splits.values())
    has_part2 = any(s.part2_dir is not None for s in splits.values())
    if has_part1 != has_part2:
        log.warning(
            "%s: only Part %d ground truth found; masks need Part 1 and Part 2, so the collection is read "
            "as classification-only",
            root,
            1 if has_part1 else 2,
        )
    collection = IsicCollection(root=root, splits=splits, has_part1=has_part1, has_part2=has_part2)
    for split in splits.values():
        _pair_files(split, collection.has_masks)
        log.info(
            "%s: %d samples, %d bad (%s)", split.official, len(split.samples), len(split.problems), split.data_dir
        )
    return collection


def _pair_files(split: IsicSplit, with_masks: bool) -> None:
    """Fill ``split.samples``, ``split.problems`` and ``split.metadata`` from the CSVs and the files on disk."""
    images = _index(split.data_dir, IMAGE_SUFFIXES, exclude=(SUPERPIXELS_SUFFIX,))
    if split.metadata_csv is not None:
        split.metadata = read_metadata_csv(split.metadata_csv, set(images))
    superpixels = _index(split.data_dir, (SUPERPIXELS_SUFFIX,)) if with_masks else {}
    segmentations = _index(split.part1_dir, (SEGMENTATION_SUFFIX,)) if with_masks else {}
    features = _index(split.part2_dir, (FEATURES_SUFFIX,)) if with_masks else {}
    prefix = f"ISIC-2017_{split.official}"
    missing_dirs = {
        "part1": split.csv.parent / f"{prefix}_Part1_GroundTruth" if split.part1_dir is None else None,
        "part2": split.csv.parent / f"{prefix}_Part2_GroundTruth" if split.part2_dir is None else None,
    }

    rows, problems = read_labels_csv(split.csv)
    split.problems.extend(problems)
    in_csv: set[str] = set()
    for image_id, value in rows:
        key = image_id.lower()
        in_csv.add(key)
        if value is None:
            continue
        image = images.get(key)
        if image is None:
            split.problems.append(
                BadSample(str(split.csv), f"row {image_id} has no image ({image_id}.jpg) in {split.data_dir}")
            )
            continue
        sample = IsicSample(id=image_id, label=int(value >= 0.5), image=image)
        if with_masks:
            wanted = (
                ("superpixels", superpixels, split.data_dir, SUPERPIXELS_SUFFIX, None),
                ("segmentation", segmentations, split.part1_dir, SEGMENTATION_SUFFIX, missing_dirs["part1"]),
                ("features", features, split.part2_dir, FEATURES_SUFFIX, missing_dirs["part2"]),
            )
            paths: dict[str, Path] = {}
            bad: BadSample | None = None
            for attr, index, folder, suffix, missing_dir in wanted:
                if missing_dir is not None:
                    bad = BadSample(str(missing_dir), f"folder missing (other splits have it), needed by {image_id}")
                    break
                if key not in index:
                    bad = BadSample(str(folder / f"{image_id}{suffix}"), f"{attr} file of {image_id} missing")
                    break
                paths[attr] = index[key]
            if bad is not None:
                split.problems.append(bad)
                continue
            sample = IsicSample(id=image_id, label=sample.label, image=image, **paths)
        split.samples.append(sample)

    for key in sorted(set(images) - in_csv):
        split.problems.append(BadSample(str(images[key]), f"image has no row in {split.csv}"))
    for kind, index in (("superpixel map", superpixels), ("segmentation", segmentations), ("features", features)):
        orphans = sorted(set(index) - set(images))
        if orphans:
            log.warning("%s: %d %s files without an image, ignored (e.g. %s)", split.official, len(orphans), kind,
                        index[orphans[0]])
