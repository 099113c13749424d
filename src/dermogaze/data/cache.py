"""Load back a cache of resized arrays written by :func:`dermogaze.data.prepare.prepare` (docs/design.md §3).

Layout of a cache folder::

    info.json                  written last; the cache is valid only if it exists and matches
    <split>/images.npy         uint8 (N, S, S, 3), bilinear resize
    <split>/labels.npy         float32 (N,), 1 = melanoma, 0 = other, NaN = unknown
    <split>/sizes.npy          int32 (N, 2): each image's original (width, height), as stored on disk
    <split>/ids.json           {"token": ..., "ids": [...], "metadata": [fields of metadata.json]}
    <split>/masks.npy          bool (N, K, S, S), nearest resize, K = len(info["structures"])  (only with masks)
    <split>/superpixels.npy    int32 (N, S, S), nearest resize            (only with ISIC 2017 masks)
    <split>/sp_features.npy    float32 (sum n_i, 4), JSON values per superpixel
    <split>/sp_offsets.npy     int64 (N + 1,): sample i owns rows offsets[i]:offsets[i+1]
    <split>/metadata.json      {field: [value per id]}, e.g. age, sex      (only with a metadata CSV)

Plain ``.npy`` files are memory-mapped by :func:`load_split`, so a Dataset shares them between
DataLoader workers for free. Masks are stored unpacked (bool): about 1 GB for all of ISIC 2017 at
256 px, traded for zero-cost random access.

``info.json`` records a random ``token`` that every split's ``ids.json`` repeats, and the counts
that the arrays must have; :func:`load_info` checks both (and every array's dtype and shape), so a
half-written or half-moved cache never loads. ``info["structures"]`` is the collection's structure
set, in the order of the masks' ``K`` axis; a sample whose diagnosis is unknown has the label NaN
(``info["labelled"]`` counts the known ones per split, ``info["melanoma"]`` the melanomas among
them). How the arrays are computed, and how a cache is replaced safely: :mod:`dermogaze.data.prepare`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..files import check_file_kind
from ..structures import presence_weights, short_names

CACHE_VERSION = 3  # the layout above; a cache of another version is rebuilt by prepare, refused by load_info
INFO_FILE = "info.json"


@dataclass
class SplitArrays:
    """The arrays of one cached split (memory-mapped, read-only).

    Attributes:
        images: uint8 ``(N, S, S, 3)``.
        masks: bool ``(N, K, S, S)`` in the order of ``info["structures"]``, or ``None`` without masks.
        labels: float32 ``(N,)``, 1 = melanoma, 0 = other, NaN = unknown.
        ids: the N image ids.
        superpixels: int32 ``(N, S, S)`` superpixel indices, or ``None``.
        sp_features: per sample a float32 ``(n_i, 4)`` array of the JSON values of each superpixel in
            DERMOSCOPIC_FEATURES order, or ``None``.
        metadata: patient metadata ``{field: [value per id]}`` (``"age"`` float years, ``"sex"``
            ``"female"``/``"male"``, ``"localization"``; ``None`` where unknown), or ``None`` when the
            split had no metadata CSV. :func:`dermogaze.data.metadata.group_labels` turns it into
            subgroups.
        sizes: int32 ``(N, 2)``, the original ``(width, height)`` of each image (predictions are
            written back at that size).
    """

    images: np.ndarray
    masks: np.ndarray | None
    labels: np.ndarray
    ids: list[str]
    superpixels: np.ndarray | None
    sp_features: list[np.ndarray] | None
    metadata: dict[str, list] | None = None
    sizes: np.ndarray | None = None  # int32 (N, 2): original (width, height) of each image

    def __len__(self) -> int:
        return len(self.ids)


def _split_files(info: dict) -> dict[str, tuple[Any, ...]]:
    """Expected ``{file: (dtype, shape without N)}`` of every split array."""
    s = info["size"]
    files: dict[str, tuple[Any, ...]] = {"images": (np.uint8, (s, s, 3)), "labels": (np.float32, ()),
                                         "sizes": (np.int32, (2,))}
    if info["has_masks"]:
        files["masks"] = (np.bool_, (len(info["structures"]), s, s))
    if info["has_superpixels"]:
        files["superpixels"] = (np.int32, (s, s))
    return files


def _check_split(cache: Path, split: str, info: dict) -> tuple[list[str], dict[str, list] | None]:
    """Check one split's files against ``info``; return its ids and its metadata (``None`` without)."""
    folder = cache / split
    n = info["counts"][split]
    try:
        meta = json.loads((folder / "ids.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{folder / 'ids.json'}: missing or unreadable ({exc}); prepare the cache again") from None
    if meta.get("token") != info.get("token") or len(meta.get("ids", [])) != n:
        raise DataError(f"{folder}: does not belong to {cache / INFO_FILE} (interrupted run?); prepare the cache again")
    for part, (dtype, shape) in _split_files(info).items():
        path = folder / f"{part}.npy"
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: missing or unreadable ({exc}); prepare the cache again") from None
        if array.dtype != dtype or array.shape != (n, *shape):
            raise DataError(f"{path}: holds {array.dtype} {array.shape}, info.json expects {np.dtype(dtype)} "
                            f"{(n, *shape)}; prepare the cache again")
    fields = meta.get("metadata", [])
    if not fields:
        return list(meta["ids"]), None
    path = folder / "metadata.json"
    try:
        metadata = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: missing or unreadable ({exc}); prepare the cache again") from None
    if (not isinstance(metadata, dict) or list(metadata) != fields or not set(fields) <= set(info["metadata"])
            or any(not isinstance(v, list) or len(v) != n for v in metadata.values())):
        raise DataError(f"{path}: expected {n} values for each of {', '.join(fields)}; prepare the cache again")
    return list(meta["ids"]), metadata


def load_info(cache: str | Path) -> dict:
    """Read and check a cache's ``info.json`` (and that every split it lists is complete).

    Raises:
        DataError: no cache at ``cache``, an interrupted preparation, a different cache version,
        or split files that do not match ``info.json``.
    """
    cache = Path(cache)
    path = cache / INFO_FILE
    check_file_kind(cache, "cache", "give the folder written by `dermogaze data prepare`", folder=True)
    if not cache.is_dir():
        raise DataError(f"{cache}: no prepared cache here (run `dermogaze data prepare`)")
    if not path.is_file():
        if not any((split / "images.npy").exists() for split in cache.iterdir() if split.is_dir()):
            raise DataError(f"{cache} is not a prepared cache (it has no {INFO_FILE}): give the folder that "
                            "`dermogaze data prepare --out` wrote, or prepare this one first")
        raise DataError(f"{path}: missing, so {cache} is not a complete cache (interrupted?); run "
                        "`dermogaze data prepare` again")
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    if not isinstance(info, dict) or info.get("version") != CACHE_VERSION:
        found = info.get("version") if isinstance(info, dict) else None
        raise DataError(f"{path}: cache version {found}, this dermogaze reads version {CACHE_VERSION}; "
                        "prepare the cache again")
    for split in info["splits"]:
        _check_split(cache, split, info)
    return info


def load_split(cache: str | Path, split: str) -> SplitArrays:
    """Memory-map the arrays of one cached split.

    Args:
        cache: a folder written by :func:`dermogaze.data.prepare.prepare`.
        split: ``train``, ``val`` or ``test``.

    Raises:
        DataError: no valid cache, or the cache has no such split.
    """
    cache = Path(cache)
    info = load_info(cache)
    if split not in info["splits"]:
        raise DataError(f"{cache / split}: split {split!r} not in this cache (splits: {', '.join(info['splits'])})")
    ids, metadata = _check_split(cache, split, info)
    folder = cache / split

    def load(part: str) -> np.ndarray:
        return np.load(folder / f"{part}.npy", mmap_mode="r")

    masks = superpixels = sp_features = None
    if info["has_masks"]:
        masks = load("masks")
    if info["has_superpixels"]:
        superpixels = load("superpixels")
        flat, offsets = load("sp_features"), np.load(folder / "sp_offsets.npy")
        sp_features = [flat[offsets[i] : offsets[i + 1]] for i in range(len(ids))]
    return SplitArrays(
        images=load("images"),
        masks=masks,
        labels=np.load(folder / "labels.npy"),
        ids=ids,
        superpixels=superpixels,
        sp_features=sp_features,
        metadata=metadata,
        sizes=load("sizes"),
    )


def format_stats(info: dict) -> str:
    """Text of ``dermogaze data stats``: split sizes, normalisation, Table 1 and Table 2.

    Args:
        info: a cache's info dict (:func:`load_info`).
    """
    lines = [f"cache size {info['size']}×{info['size']}, splits:"]
    lines.append(f"{'split':<8}{'images':>8}{'melanoma':>10}{'labelled':>10}")
    for split in info["splits"]:
        lines.append(f"{split:<8}{info['counts'][split]:>8}{info['melanoma'][split]:>10}"
                     f"{info['labelled'][split]:>10}")
    lines.append(f"structures ({info['layout']}): " + ", ".join(info["structures"]))
    lines.append("training mean (R G B): " + " ".join(f"{v:.4f}" for v in info["mean"]))
    lines.append("training std  (R G B): " + " ".join(f"{v:.4f}" for v in info["std"]))
    if info["skipped"]:
        lines.append(f"{len(info['skipped'])} bad samples were skipped when the cache was prepared")
    lines.append("patient metadata: " + (", ".join(info["metadata"]) or "none"))
    if not info["has_masks"]:
        lines.append("no structure masks in this cache (no Part 1/Part 2): Tables 1 and 2 need them")
        return "\n".join(lines)

    n_train = info["counts"]["train"]
    presences = np.asarray(info["presences"])
    lines += ["", f"Table 1: presence of the structures in the training split ({n_train} images)"]
    lines.append(f"{'structure':<18}{'images':>8}{'% images':>10}{'% pixels':>10}")
    structures = info["structures"]
    for name, p, frac in zip(structures, presences, info["pixel_fraction"], strict=True):
        lines.append(f"{name:<18}{p:>8d}{100 * p / n_train:>10.2f}{100 * frac:>10.2f}")

    lines += ["", "Table 2: structure weights from the presences (w: Eq. 15, w': Eq. 16)"]
    lines.append("weight " + "".join(f"{name:>10}" for name in short_names(structures)))
    w = presence_weights(presences, "w") if presences.sum() > 0 else None
    lines.append("w      " + ("".join(f"{x:>10.3f}" for x in w) if w is not None else f"{'n/a':>10}" * len(structures)))
    absent = [name for name, p in zip(structures, presences, strict=True) if p == 0]
    if absent:
        lines.append("w'     " + f"{'n/a':>10}" * len(structures))
        lines.append(f"w' is undefined: never present in the training split: {', '.join(absent)}")
    else:
        lines.append("w'     " + "".join(f"{x:>10.3f}" for x in presence_weights(presences, "w'")))
    return "\n".join(lines)
