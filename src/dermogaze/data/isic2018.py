"""Reader of the ISIC 2018 Task 1-2 layout (docs/design.md §2b): images, lesion masks, five attribute masks.

A collection on disk holds, per official split (``Training``, ``Validation``, ``Test``)::

    ISIC2018_Task1-2_<split>_Input/ISIC_<7 digits>.jpg                  lesion image
    ISIC2018_Task1_<split>_GroundTruth/ISIC_<id>_segmentation.png       lesion mask, 0/255
    ISIC2018_Task2_<split>_GroundTruth_v3/ISIC_<id>_attribute_<name>.png   one mask per attribute, 0/255

with ``name`` ∈ :data:`ATTRIBUTES`. The structure set is
:data:`~dermogaze.structures.ISIC2018_STRUCTURES`: lesion, skin and the five attributes, built by
Eqs. 17-19 as for ISIC 2017 (:func:`dermogaze.data.isic2017.build_masks`; ``M_dermo`` is the union
of the five attribute masks). Diagnosis labels do not ship with Task 1-2: they come from a CSV of
the ISIC archive's metadata (``prepare --labels``), given here as a mapping; an image without a
label is kept with ``label=None`` (it trains the structure terms only).

:func:`read_collection` finds the splits and pairs every image with its masks;
:func:`sample_masks` decodes, checks and resizes the masks of one sample (called by
:mod:`dermogaze.data.prepare` in its workers).

Decisions where docs/design.md and the paper are silent:

* Folder names are matched case-insensitively, with or without the ``_v3`` suffix (``_v3`` is
  preferred when both exist), nested folders of the same name are entered
  (:func:`dermogaze.data.isic2017._unnest`); images may be ``.jpg``/``.jpeg``/``.png`` in any case.
* A split is *annotated* when both its Task 1 and Task 2 folders exist. The official Validation and
  Test splits are used only when both are annotated (their ground truth was released later and is
  often absent); otherwise the Training split is divided into train/val/test by a seeded split
  stratified by the diagnosis where known (:func:`dermogaze.data.splits.split_ids`), the ids of each
  part recorded in the cache, and the unannotated input folders are ignored with a warning.
* Bad samples (an error naming the file, or skipped and counted with ``--skip-bad``): an image
  without its lesion mask or without any of its attribute masks; an image with some attribute masks
  but not all (the first missing file is named); an attribute or lesion mask without its image; a
  mask whose size is not the image's; a mask with values other than 0 and 255 (non-binary).
  Masks are binarised at > 127 after that check.
* Images and masks are read on their stored pixel grid (no EXIF orientation), as for ISIC 2017.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..structures import ISIC2018_STRUCTURES, dermoscopic
from .images import read_image_file, resize_nearest
from .isic2017 import (
    IMAGE_SUFFIXES,
    SEGMENTATION_SUFFIX,
    BadSample,
    IsicCollection,
    IsicSample,
    IsicSplit,
    _entries,
    _index,
    _unnest,
    build_masks,
)
from .splits import split_ids

log = logging.getLogger(__name__)

#: The five Task 2 attributes, in the order of :data:`~dermogaze.structures.ISIC2018_STRUCTURES`.
ATTRIBUTES: tuple[str, ...] = dermoscopic(ISIC2018_STRUCTURES)

#: Cache split name → official split name.
OFFICIAL_SPLITS: dict[str, str] = {"train": "Training", "val": "Validation", "test": "Test"}

#: Prefix every ISIC 2018 Task 1-2 folder name starts with (lower case): how a collection is recognised.
LAYOUT_PREFIXES: tuple[str, ...] = ("isic2018_task1-2_", "isic2018_task1_", "isic2018_task2_")


def attribute_suffix(name: str) -> str:
    """``_attribute_<name>.png``: the file name ending of an attribute mask."""
    return f"_attribute_{name}.png"


def is_isic2018(root: str | Path) -> bool:
    """Whether ``root`` holds ISIC 2018 Task 1-2 folders (``ISIC2018_Task1-2_*``, ``ISIC2018_Task1_*``...)."""
    root = Path(root)
    return root.is_dir() and any(name.startswith(LAYOUT_PREFIXES) for name in _entries(root))


# --------------------------------------------------------------------------------------------
# Masks of one sample
# --------------------------------------------------------------------------------------------


def read_binary_mask(path: Path, shape: tuple[int, int], what: str) -> np.ndarray:
    """Read a 0/255 single-channel mask of the image's ``shape`` ``(H, W)`` as bool (``> 127``).

    Raises:
        DataError: missing or unreadable file, another size than the image's, a value other than 0 and 255.
    """
    mask = read_image_file(path, "L", exif_orientation=False, annotation=True, what=what)  # (H, W) uint8
    if mask.shape != shape:
        raise DataError(
            f"{path}: {what} is {mask.shape[1]}×{mask.shape[0]} but its image is {shape[1]}×{shape[0]}"
        )
    odd = mask[(mask != 0) & (mask != 255)]
    if odd.size:
        raise DataError(f"{path}: {what} is not binary (holds the value {int(odd[0])}; expected only 0 and 255)")
    return mask > 127


def sample_masks(sample: IsicSample, shape: tuple[int, int], size: int) -> np.ndarray:
    """The structure masks of one ISIC 2018 sample at the cache size, in ISIC2018_STRUCTURES order.

    The full-size masks are checked (size, binary), resized with nearest sampling and combined by
    Eqs. 17-19 (building them at full size and resizing gives the same pixels).

    Args:
        sample: a sample of :func:`read_collection` (``segmentation`` and ``attributes`` set).
        shape: the image's stored ``(H, W)``.
        size: the cache side.

    Returns:
        bool ``(7, size, size)``.

    Raises:
        DataError: a bad mask (:func:`read_binary_mask`).
    """
    assert sample.segmentation is not None and sample.attributes is not None
    lesion = resize_nearest(read_binary_mask(sample.segmentation, shape, "lesion mask"), size)  # (S, S)
    attrs = {
        name: resize_nearest(read_binary_mask(path, shape, f"{name} mask"), size)
        for name, path in zip(ATTRIBUTES, sample.attributes, strict=True)
    }
    return build_masks(lesion, attrs, ATTRIBUTES)  # (7, S, S)


# --------------------------------------------------------------------------------------------
# Finding the files of a collection
# --------------------------------------------------------------------------------------------


def _folder(entries: dict[str, Path], *names: str) -> Path | None:
    """The first of ``names`` (lower case) that is a folder among ``entries``, un-nested."""
    for name in names:
        path = entries.get(name)
        if path is not None and path.is_dir():
            return _unnest(path)
    return None


def _find_split(entries: dict[str, Path], name: str) -> IsicSplit | None:
    official = OFFICIAL_SPLITS[name]
    data = _folder(entries, f"isic2018_task1-2_{official}_input".lower())
    part1 = _folder(entries, f"isic2018_task1_{official}_groundtruth".lower())
    part2 = _folder(
        entries, f"isic2018_task2_{official}_groundtruth_v3".lower(), f"isic2018_task2_{official}_groundtruth".lower()
    )
    if data is None:
        if part1 is not None or part2 is not None:
            raise DataError(f"{part1 or part2}: ground truth of the {official} split without its "
                            f"ISIC2018_Task1-2_{official}_Input folder")
        return None
    return IsicSplit(name=name, official=official, data_dir=data, csv=None, part1_dir=part1, part2_dir=part2)


def read_collection(
    root: str | Path,
    labels: Mapping[str, int | None] | None = None,
    *,
    lesions: Mapping[str, str | None] | None = None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> IsicCollection:
    """Find the splits of an ISIC 2018 Task 1-2 collection and pair every image with its masks.

    Args:
        root: folder holding the unzipped ``ISIC2018_Task*`` folders.
        labels: diagnosis per image id (1 = melanoma, 0 = other, ``None`` = unknown), e.g. from
            ``prepare --labels``; images it does not list are unlabelled. ``None``: all unlabelled.
        lesions: the lesion id per image id where known (several images of one lesion stay on one
            side when the Training split is divided).
        fractions: train/val/test fractions when the Training split is divided (see the module docstring).
        seed: of that division.

    Returns:
        the collection (``layout="isic2018"``, ``structures=ISIC2018_STRUCTURES``); each split lists
        its usable samples (in image-name order) and its bad samples.

    Raises:
        DataError: ``root`` missing, no Training input folder, ground truth without its input folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: ISIC folder does not exist")
    entries = _entries(root)
    found = {name: split for name in OFFICIAL_SPLITS if (split := _find_split(entries, name)) is not None}
    if "train" not in found:
        raise DataError(f"{root}: no ISIC2018_Task1-2_Training_Input folder (the normalisation statistics come "
                        "from the Training split)")
    known = {k.lower(): v for k, v in (labels or {}).items()}
    train = found["train"]
    annotated = train.part1_dir is not None and train.part2_dir is not None
    if not annotated and (train.part1_dir is not None or train.part2_dir is not None):
        log.warning("%s: only one of the Task 1 and Task 2 ground truths found; the collection is read without "
                    "masks", root)
    official = annotated and all(
        s in found and found[s].part1_dir is not None and found[s].part2_dir is not None for s in ("val", "test")
    )
    for name, split in found.items():
        if official or not annotated or name == "train":
            _pair_files(split, annotated, known)
    if official or not annotated:
        splits = found
    else:
        ignored = [found[s].data_dir for s in ("val", "test") if s in found]
        if ignored:
            log.warning("%s: no complete Validation and Test ground truth: dividing the Training split %s instead "
                        "(ignoring %s)", root, "/".join(f"{f:g}" for f in fractions), ", ".join(map(str, ignored)))
        splits = _divide(train, fractions, seed, {k.lower(): v for k, v in (lesions or {}).items()})
    collection = IsicCollection(
        root=root, splits=splits, has_part1=annotated, has_part2=annotated, layout="isic2018",
        structures=ISIC2018_STRUCTURES,
    )
    for split in splits.values():
        log.info("%s (%s): %d samples, %d bad (%s)", split.name, split.official, len(split.samples),
                 len(split.problems), split.data_dir)
    return collection


def _pair_files(split: IsicSplit, with_masks: bool, labels: Mapping[str, int | None]) -> None:
    """Fill ``split.samples`` and ``split.problems`` from the files on disk."""
    images = _index(split.data_dir, IMAGE_SUFFIXES)
    segmentations = _index(split.part1_dir, (SEGMENTATION_SUFFIX,)) if with_masks else {}
    attributes = {name: _index(split.part2_dir, (attribute_suffix(name),)) for name in ATTRIBUTES} if with_masks else {}
    for key in sorted(images):
        image = images[key]
        image_id = image.name[: -len(image.suffix)]
        label = labels.get(key)
        if not with_masks:
            split.samples.append(IsicSample(id=image_id, label=label, image=image))
            continue
        assert split.part1_dir is not None and split.part2_dir is not None
        if key not in segmentations:
            split.problems.append(BadSample(str(split.part1_dir / f"{image_id}{SEGMENTATION_SUFFIX}"),
                                            f"lesion mask of {image_id} missing"))
            continue
        missing = [name for name in ATTRIBUTES if key not in attributes[name]]
        if missing:
            what = "has the other attribute masks" if len(missing) < len(ATTRIBUTES) else "has no attribute mask"
            split.problems.append(BadSample(str(split.part2_dir / f"{image_id}{attribute_suffix(missing[0])}"),
                                            f"attribute mask missing ({image_id} {what})"))
            continue
        split.samples.append(IsicSample(
            id=image_id, label=label, image=image, segmentation=segmentations[key],
            attributes=tuple(attributes[name][key] for name in ATTRIBUTES),
        ))
    orphans = [(p, "lesion mask") for k, p in segmentations.items() if k not in images]
    orphans += [(p, f"{name} mask") for name in ATTRIBUTES for k, p in attributes[name].items() if k not in images]
    for path, what in sorted(orphans):
        split.problems.append(BadSample(str(path), f"{what} without its image in {split.data_dir}"))


def _divide(
    train: IsicSplit, fractions: Sequence[float], seed: int, lesions: Mapping[str, str | None]
) -> dict[str, IsicSplit]:
    """The Training split divided into train/val/test by :func:`dermogaze.data.splits.split_ids`."""
    ids = [s.id for s in train.samples]
    labels = [math.nan if s.label is None else float(s.label) for s in train.samples]
    groups = [lesions.get(i.lower()) for i in ids] if lesions else None
    parts = split_ids(ids, labels, groups, fractions=fractions, seed=seed)
    by_id = {s.id: s for s in train.samples}
    splits: dict[str, IsicSplit] = {}
    for name in OFFICIAL_SPLITS:
        split = IsicSplit(name=name, official=f"{train.official} ({name} part)", data_dir=train.data_dir, csv=None,
                          part1_dir=train.part1_dir, part2_dir=train.part2_dir)
        split.samples = [by_id[i] for i in parts[name]]
        if name == "train":
            split.problems = list(train.problems)  # bad files are reported once
        splits[name] = split
    return splits
