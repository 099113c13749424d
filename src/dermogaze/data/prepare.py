"""Prepare an ISIC 2017 or 2018 collection once into a cache of resized arrays (docs/design.md §3).

The writer of the cache that :mod:`dermogaze.data.cache` reads (the folder's layout is described
there). One sample is decoded, checked and resized (:func:`_process_sample`, in a pool of
``workers`` processes); one split is written into memory-mapped ``.npy`` files
(:func:`_prepare_split`); :func:`prepare` builds every split, the training statistics and
``info.json``, and puts the new cache in place.

Crash safety: :func:`prepare` builds the whole new cache in a hidden sibling folder
``.<out>.tmp-<token>`` (``info.json`` written last, atomically, by
:func:`dermogaze.files.write_json`) and only when it is complete swaps it in with two renames: the
old cache moves aside to ``.<out>.old-<token>``, the new one takes its name, the old one is
deleted. A bad sample, an error or a kill at any earlier point leaves the old cache untouched and
loadable; leftovers are removed by the next :func:`prepare`, which also puts an old cache back if
a kill fell between the two renames. (When ``out`` is a mount point or its parent folder is not
writable, the new cache is built in ``out/.tmp-<token>`` instead; then, as when ``out`` cannot be
renamed, the complete splits are moved in one by one, ``info.json`` last: the old cache stops being
valid only during that last step.) ``info.json`` records a random ``token``
that every split's ``ids.json`` repeats, and the counts that the arrays must have;
:func:`dermogaze.data.cache.load_info` checks both, so a half-moved cache never loads.

One :func:`prepare` at a time per cache: it holds ``.<out>.lock`` beside ``out`` (``out/.prepare.lock``
when the parent folder is not writable; :class:`dermogaze.files.PidLock`) from before its clean-up to
after the swap, and another one into the same folder stops at once, naming the holder's pid; the lock
of a process that died is taken over. The arrays are memory-mapped with their disk blocks reserved
first (:func:`_open_array`), so that a full disk is an ``OSError`` (ENOSPC) naming the cache rather than
a process killed by ``SIGBUS`` when it writes into the map. Re-running on
an unchanged collection (same file names, sizes and modification times, same options) returns the
existing cache without work; anything else rebuilds it.

The collection's layout is recognised from its folder names (``ISIC-2017_*`` or ``ISIC2018_Task*``,
:mod:`dermogaze.data.isic2017`, :mod:`dermogaze.data.isic2018`) or given (``layout``); its structure
set (six structures for ISIC 2017, seven for 2018) is recorded in ``info["structures"]`` and every
mask, presence count and weight follows it.

Decisions where docs/design.md and the paper are silent:

* A sample whose diagnosis is unknown (ISIC 2018 Task 1-2 without ``--labels``, or an image the
  labels CSV does not list) has the label NaN; ``info["labelled"]`` counts the known ones per split
  and ``info["melanoma"]`` the melanomas among them.

* Masks are built at the cache size from the nearest-resized lesion mask and superpixel map, which
  equals building them at full size and resizing each with nearest (same sampled pixels).
  Nearest sampling takes source pixel ``floor((i + 0.5) * H / S)``, as Pillow does
  (:func:`dermogaze.data.images.resize_nearest`).
* The training ``mean``/``std`` are population statistics over all pixels of the resized training
  images, in [0, 1] units, computed exactly from integer sums.
* Table 1's ``pixel_fraction`` is measured at the cache size over all training pixels.
* Without masks, ``presences`` and ``pixel_fraction`` are ``None``.
* Patient metadata (:mod:`dermogaze.data.metadata`) is stored for the splits whose Data folder holds
  a metadata CSV, aligned with ``ids`` (skipped samples dropped alike), ``None`` where unknown;
  ``info["metadata"]`` lists the fields any split holds (``[]`` when none does).
* ``info["kind"]`` is ``"synthetic"`` for a collection written by :mod:`dermogaze.data.synth` (its sidecar
  files) and ``"real"`` otherwise; with the cache's name, size and fingerprint it becomes the
  ``training_data`` of the models trained on it (:mod:`dermogaze.data.provenance`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..config import LAYOUTS
from ..errors import DataError
from ..files import PidLock, write_json
from ..interrupt import check as check_interrupt
from ..structures import DERMOSCOPIC_FEATURES
from . import isic2017, isic2018
from .cache import CACHE_VERSION, INFO_FILE, load_info
from .images import check_image_file, read_image_file, resize_image, resize_nearest
from .isic2017 import BadSample, IsicCollection, IsicSample
from .metadata import FIELDS

log = logging.getLogger(__name__)

MARKER_FILE = ".dermogaze-cache"
LOCK_SUFFIX = ".lock"  # .<out>.lock beside out: held by the prepare writing out
INSIDE_LOCK = ".prepare.lock"  # out/.prepare.lock: the same, when out's parent folder is not writable
TMP_PREFIX = ".tmp-"  # a cache being built: .<out>.tmp-<token> beside out (or out/.tmp-<token>)
OLD_PREFIX = ".old-"  # the previous cache during the swap: .<out>.old-<token>


# --------------------------------------------------------------------------------------------
# One sample
# --------------------------------------------------------------------------------------------


@dataclass
class _Processed:
    """One sample resized to the cache size (what a worker sends back)."""

    image: np.ndarray  # uint8 (S, S, 3)
    masks: np.ndarray | None  # bool (K, S, S)
    superpixels: np.ndarray | None  # int32 (S, S)
    sp_features: np.ndarray | None  # float32 (n, 4)
    size: tuple[int, int]  # the original (width, height)


def _open_array(path: Path, dtype: np.dtype | type, shape: tuple[int, ...]) -> np.memmap:
    """A new ``.npy`` file memory-mapped for writing, its disk blocks reserved before anything is written.

    Writing into a map whose file the disk cannot hold kills the process (``SIGBUS``); reserving the blocks
    first (``posix_fallocate``, where the system has it) turns a full disk into an ``OSError`` naming ``path``.
    A file system that cannot reserve blocks is written as before.
    """
    array = np.lib.format.open_memmap(path, "w+", dtype, shape)
    if not hasattr(os, "posix_fallocate"):
        return array
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            del array
            raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        os.close(fd)
    return array


def _process_sample(sample: IsicSample, size: int, with_masks: bool, draft: bool = True) -> _Processed:
    """Decode one sample, check it and resize it to the cache size.

    Raises:
        DataError: unreadable file, sizes that disagree, superpixel index beyond the JSON.
    """
    full_w, full_h = check_image_file(sample.image)
    # The stored pixel grid, on which the masks are drawn (no EXIF orientation).
    decoded = read_image_file(sample.image, exif_orientation=False, draft_size=size if draft else None)
    image = resize_image(decoded, size)  # (S, S, 3)
    if not with_masks:
        return _Processed(image=image, masks=None, superpixels=None, sp_features=None, size=(full_w, full_h))
    if sample.attributes is not None:  # ISIC 2018: pixel masks, no superpixels
        masks = isic2018.sample_masks(sample, (full_h, full_w), size)
        return _Processed(image=image, masks=masks, superpixels=None, sp_features=None, size=(full_w, full_h))
    assert sample.segmentation is not None and sample.superpixels is not None and sample.features is not None
    lesion = isic2017.read_lesion_mask(sample.segmentation)
    index_map = isic2017.read_superpixels(sample.superpixels)
    for what, path, shape in (
        ("lesion mask", sample.segmentation, lesion.shape),
        ("superpixel map", sample.superpixels, index_map.shape),
    ):
        if shape != (full_h, full_w):
            raise DataError(
                f"{path}: {what} is {shape[1]}×{shape[0]} but its image {sample.image.name} is {full_w}×{full_h}"
            )
    features = isic2017.read_features(sample.features)
    # Check the full-resolution map: an index that the resize happens to skip is still an error.
    top = int(index_map.max())
    n_values = len(features[DERMOSCOPIC_FEATURES[0]])
    if top >= n_values:
        raise DataError(
            f"{sample.superpixels}: superpixel index {top} is beyond the {n_values} values of {sample.features.name}"
        )
    source = f"{sample.superpixels} (with {sample.features.name})"
    small_map = resize_nearest(index_map, size)  # (S, S) uint32
    small_lesion = resize_nearest(lesion, size)  # (S, S) bool
    masks = isic2017.build_masks(small_lesion, isic2017.feature_masks(small_map, features, source=source))
    sp_features = np.stack([features[name] for name in DERMOSCOPIC_FEATURES], axis=1).astype(np.float32)  # (n, 4)
    return _Processed(image=image, masks=masks, superpixels=small_map.astype(np.int32), sp_features=sp_features,
                      size=(full_w, full_h))


def _process_or_report(sample: IsicSample, size: int, with_masks: bool, draft: bool) -> _Processed | BadSample:
    """Worker entry point: a processed sample, or the bad sample it turned out to be."""
    try:
        return _process_sample(sample, size, with_masks, draft)
    except DataError as exc:
        message = str(exc)
        files = (sample.image, sample.superpixels, sample.segmentation, sample.features, *(sample.attributes or ()))
        for path in files:
            if path is not None and message.startswith(f"{path}: "):
                return BadSample(str(path), message[len(f"{path}: ") :])
        return BadSample(str(sample.image), message)


# --------------------------------------------------------------------------------------------
# One split
# --------------------------------------------------------------------------------------------


class _TrainingStats:
    """Exact running sums for the training mean/std and the structure presences (Table 1)."""

    def __init__(self, num_structures: int) -> None:
        self.pixels = 0
        self.sum = np.zeros(3, np.int64)
        self.sum_sq = np.zeros(3, np.int64)
        self.presences = np.zeros(num_structures, np.int64)
        self.structure_pixels = np.zeros(num_structures, np.int64)

    def add(self, item: _Processed) -> None:
        x = item.image.reshape(-1, 3).astype(np.int64)  # (S*S, 3)
        self.pixels += x.shape[0]
        self.sum += x.sum(0)
        self.sum_sq += (x * x).sum(0)
        if item.masks is not None:
            counts = item.masks.reshape(len(self.presences), -1).sum(1)  # (K,)
            self.presences += counts > 0
            self.structure_pixels += counts

    def mean_std(self) -> tuple[list[float], list[float]]:
        mean = self.sum / self.pixels
        var = np.maximum(self.sum_sq / self.pixels - mean**2, 0.0)
        return (mean / 255.0).tolist(), (np.sqrt(var) / 255.0).tolist()


def _iterate(
    samples: list[IsicSample], size: int, with_masks: bool, draft: bool, workers: int
) -> Iterator[_Processed | BadSample]:
    """Process samples in order, in this process or in a pool of ``workers``."""
    func = functools.partial(_process_or_report, size=size, with_masks=with_masks, draft=draft)
    if workers <= 1 or len(samples) < 2:
        for sample in samples:
            yield func(sample)
        return
    with multiprocessing.get_context().Pool(min(workers, len(samples))) as pool:
        yield from pool.imap(func, samples, chunksize=max(1, min(16, len(samples) // (4 * workers))))


def _prepare_split(
    collection: IsicCollection,
    name: str,
    folder: Path,
    token: str,
    *,
    size: int,
    workers: int,
    skip_bad: bool,
    progress: bool,
    draft: bool,
    stats: _TrainingStats | None,
) -> tuple[int, list[dict[str, str]]]:
    """Write one split into ``folder`` (inside the cache being built). Returns (count, skipped)."""
    split = collection.splits[name]
    with_masks, with_sp = collection.has_masks, collection.has_superpixels
    skipped: list[dict[str, str]] = []

    def skip(bad: BadSample) -> None:
        if not skip_bad:
            raise bad.error()
        log.warning("skipping bad sample: %s: %s", bad.file, bad.reason)
        skipped.append({"split": name, **bad.to_dict()})

    for bad in split.problems:
        skip(bad)

    samples = split.samples
    n_max = len(samples)
    folder.mkdir()
    images = _open_array(folder / "images.part.npy", np.uint8, (n_max, size, size, 3))
    masks = superpixels = None
    if with_masks:
        masks = _open_array(folder / "masks.part.npy", np.bool_, (n_max, len(collection.structures), size, size))
    if with_sp:
        superpixels = _open_array(folder / "superpixels.part.npy", np.int32, (n_max, size, size))
    ids: list[str] = []
    labels: list[float] = []
    sizes: list[tuple[int, int]] = []
    sp_features: list[np.ndarray] = []

    bar = tqdm(total=n_max, desc=f"prepare {name}", unit="img", disable=not progress, dynamic_ncols=True)
    with bar:
        for sample, item in zip(samples, _iterate(samples, size, with_masks, draft, workers), strict=True):
            bar.update(1)
            check_interrupt()
            if isinstance(item, BadSample):
                skip(item)
                continue
            k = len(ids)
            images[k] = item.image
            if with_masks:
                masks[k] = item.masks
            if with_sp:
                superpixels[k] = item.superpixels
                sp_features.append(item.sp_features)
            ids.append(sample.id)
            labels.append(math.nan if sample.label is None else float(sample.label))
            sizes.append(item.size)
            if stats is not None:
                stats.add(item)

    n = len(ids)
    for part, array in (("images", images), ("masks", masks), ("superpixels", superpixels)):
        if array is None:
            continue
        array.flush()
        if n < n_max:  # bad samples were skipped: keep the first n rows
            final = _open_array(folder / f"{part}.npy", array.dtype, (n, *array.shape[1:]))
            final[:] = array[:n]
            final.flush()
            del final
            (folder / f"{part}.part.npy").unlink()
        else:
            os.replace(folder / f"{part}.part.npy", folder / f"{part}.npy")
    del images, masks, superpixels
    np.save(folder / "labels.npy", np.asarray(labels, dtype=np.float32))
    np.save(folder / "sizes.npy", np.asarray(sizes, dtype=np.int32).reshape(-1, 2))
    if with_sp:
        offsets = np.cumsum([0] + [len(f) for f in sp_features]).astype(np.int64)
        flat = np.concatenate(sp_features) if sp_features else np.zeros((0, len(DERMOSCOPIC_FEATURES)), np.float32)
        np.save(folder / "sp_features.npy", flat)
        np.save(folder / "sp_offsets.npy", offsets)
    fields: list[str] = []
    if split.metadata is not None:
        columns = split.metadata.columns(ids)
        fields = list(columns)
        (folder / "metadata.json").write_text(json.dumps(columns))
    (folder / "ids.json").write_text(json.dumps({"token": token, "ids": ids, "metadata": fields}))

    if skipped:
        log.warning("%s: skipped %d bad samples", name, len(skipped))
    log.info("%s: %d samples cached (%d melanoma, %d unlabelled)", name, n, np.nansum(labels),
             np.isnan(labels).sum())
    return n, skipped

# --------------------------------------------------------------------------------------------
# The cache folder: fingerprint, staging, commit
# --------------------------------------------------------------------------------------------


def _fingerprint(collection: IsicCollection, labels: str | Path | None = None) -> str:
    """Hash of every file name, size and modification time of the collection's split folders and CSVs.

    ``labels``: the ``--labels`` CSV, which the splits of an ISIC 2018 collection do not name
    (an edited labels file must rebuild the cache like an edited image).
    """
    h = hashlib.sha256()
    listed: set[Path] = set()  # splits divided from one folder share it: list it once
    for split in collection.splits.values():
        paths = [Path(p) for p in (split.csv, split.metadata_csv, labels) if p is not None]
        for folder in (split.data_dir, split.part1_dir, split.part2_dir):
            if folder is not None and folder not in listed:
                listed.add(folder)
                paths.extend(sorted(p for p in folder.rglob("*") if p.is_file()))
        for p in dict.fromkeys(paths):  # the metadata CSV is usually inside data_dir too
            st = p.stat()
            name = p.relative_to(collection.root) if p.is_relative_to(collection.root) else p.resolve()  # --labels CSV
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _kind(isic_dir: Path) -> str:
    """``info["kind"]``: ``"synthetic"`` for a collection written by :mod:`dermogaze.data.synth`, else ``"real"``
    (:mod:`dermogaze.data.provenance`)."""
    from .synth.write import is_synthetic_collection

    return "synthetic" if is_synthetic_collection(isic_dir) else "real"


def _claim_folder(out: Path) -> None:
    """Check that ``out`` is missing, empty or a dermogaze cache (never write into someone else's folder)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(p.name != INSIDE_LOCK for p in out.iterdir()) and not (out / MARKER_FILE).exists():
        raise DataError(f"{out}: folder is not empty and is not a dermogaze cache; choose another --out")


def _leftovers(out: Path, prefix: str) -> list[Path]:
    """Folders ``.<out>.<prefix><token>`` beside ``out`` that a dermogaze run made: they hold the marker, or (staging
    folders) are empty and named with a token of :func:`prepare`'s form, left by a run killed between creating and
    marking one. Called under ``out``'s lock, so no running prepare owns one."""
    if not out.parent.is_dir():
        return []
    start = f".{out.name}{prefix}"

    def ours(p: Path) -> bool:
        if (p / MARKER_FILE).exists():
            return True
        token = p.name[len(start):]
        hexed = re.fullmatch(r"[0-9a-f]{16}", token) is not None  # secrets.token_hex(8), as prepare() draws it
        return prefix == TMP_PREFIX and hexed and not any(p.iterdir())

    return sorted(
        (p for p in out.parent.iterdir() if p.name.startswith(start) and p.is_dir() and ours(p)),
        key=lambda p: p.stat().st_mtime_ns,
    )


def _clean_up(out: Path) -> None:
    """Undo what an interrupted :func:`prepare` left: put an old cache back if ``out`` is gone, delete the rest."""
    old = _leftovers(out, OLD_PREFIX)
    if old and not out.exists():  # killed between the two renames of the swap
        log.warning("restoring %s from %s (an interrupted run had moved it aside)", out, old[-1])
        os.replace(old.pop(), out)
    inside = list(out.glob(f"{TMP_PREFIX}*")) if (out / MARKER_FILE).exists() else []
    for stale in [*_leftovers(out, TMP_PREFIX), *old, *inside]:
        log.info("removing %s left by an interrupted run", stale)
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


def _lock(out: Path, shown: Path) -> PidLock:
    """Hold ``out`` (resolved; ``shown`` as the user gave it) for this :func:`prepare` (see the module docstring).

    Raises:
        DataError: another prepare holds it (the message gives its pid).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = PidLock(out.parent / f".{out.name}{LOCK_SUFFIX}")
    try:
        holder = lock.acquire()
    except OSError:  # a parent folder that is not writable: lock inside out, where the cache is built in place
        if not out.is_dir():
            raise
        lock = PidLock(out / INSIDE_LOCK)
        holder = lock.acquire()
    if holder is not None:
        raise DataError(f"{shown}: another dermogaze data prepare (pid {holder}) is writing this cache; wait for it to "
                        "end, or choose another --out")
    return lock


def _staging_folder(out: Path, token: str) -> Path:
    """Where the new cache is built: beside ``out`` (for the swap), or inside it when that cannot be."""
    if not (out.is_dir() and os.path.ismount(out)):  # beside a mount point would be another file system
        staged = out.parent / f".{out.name}{TMP_PREFIX}{token}"
        with contextlib.suppress(OSError):  # e.g. a read-only parent folder
            staged.mkdir(parents=True)
            (staged / MARKER_FILE).touch()  # so that the next run knows it for ours
            return staged
    staged = out / f"{TMP_PREFIX}{token}"
    try:
        staged.mkdir(parents=True)
        (out / MARKER_FILE).touch()
    except OSError as exc:
        raise DataError(f"{out}: cannot write the cache here ({exc})") from None
    return staged


def _commit(staged: Path, out: Path, token: str) -> None:
    """Put the complete cache ``staged`` in the place of ``out`` (see the module docstring)."""
    if staged.parent != out:  # beside out: swap with two renames
        old = out.parent / f".{out.name}{OLD_PREFIX}{token}"
        try:
            if out.exists():
                (out / MARKER_FILE).touch()  # an empty folder becomes recognisable as ours while aside
                os.replace(out, old)
        except OSError as exc:  # out cannot be renamed (busy, permissions): move in split by split below
            log.warning("%s cannot be renamed (%s); replacing its contents in place", out, exc)
        else:
            try:
                os.replace(staged, out)
            except OSError:
                if old.exists():
                    os.replace(old, out)
                raise
            if old.exists():
                shutil.rmtree(old)
            return
    # In place: the old cache stops being valid, the new splits move in, info.json comes last.
    (out / INFO_FILE).unlink(missing_ok=True)
    for entry in sorted(staged.iterdir()):
        if entry.name in (INFO_FILE, MARKER_FILE):
            continue
        if (out / entry.name).is_dir():
            shutil.rmtree(out / entry.name)
        os.replace(entry, out / entry.name)
    os.replace(staged / INFO_FILE, out / INFO_FILE)
    shutil.rmtree(staged)

# --------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------


def prepare(
    isic_dir: str | Path,
    out_dir: str | Path,
    *,
    size: int = 256,
    workers: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
    force: bool = False,
    draft: bool = True,
    layout: str = "auto",
    labels: str | Path | None = None,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict:
    """Read an ISIC 2017 or 2018 collection, resize every split once and store it as a cache.

    Args:
        isic_dir: folder with the official layout (docs/design.md §2, §2b), or a classification-only collection.
        out_dir: cache folder (created; must be empty or an earlier cache).
        size: side of the stored square images and masks (docs/design.md §3: 256).
        workers: decoding processes (1 = in this process). Output order never depends on it.
        skip_bad: skip, count and report bad samples instead of raising at the first one.
        progress: show a tqdm bar per split.
        force: rebuild even if an up-to-date cache of the same collection and options exists.
        draft: decode JPEGs with Pillow's draft mode (False only for benchmarks).
        layout: ``"isic2017"``, ``"isic2018"`` (Task 1-2), ``"images"`` (a folder of images with ``labels``:
            HAM10000, ISIC 2018 Task 3, ISIC 2019, ISIC 2020; :mod:`dermogaze.data.labels_only`) or
            ``"auto"`` (recognised from the folder names; ``images`` when ``labels`` is given and the folder
            is neither ISIC layout).
        labels: a diagnosis CSV (:func:`dermogaze.data.labels_only.read_labels`) for a collection
            without labels of its own (ISIC 2018 Task 1-2, or a folder of images); without it an ISIC 2018
            collection is structure-only.
        split: train/val/test fractions used where the training split is divided (ISIC 2018 without
            Validation/Test ground truth; a folder of images, split by lesion when the CSV knows lesions).
        seed: of that division.

    Returns:
        the cache's info dict (also in ``out_dir/info.json``).

    Raises:
        DataError: a bad sample (without ``skip_bad``), a missing folder or CSV, no training split,
        no usable training sample, an ``out_dir`` that is not a cache, or another prepare writing it.
        OSError: a failed write (a full disk); the previous cache, if any, is untouched.
    """
    isic_dir, out = Path(isic_dir), Path(out_dir)
    if size < 1:
        raise DataError(f"cache size must be positive, got {size}")
    collection = read_collection(isic_dir, layout, labels=labels, split=split, seed=seed)
    if "train" not in collection.splits:
        raise DataError(f"{isic_dir}: no Training split (the normalisation statistics come from it)")
    _claim_folder(out)
    target = out.resolve()  # a symlinked cache folder is swapped where it lives
    lock = _lock(target, shown=out)
    try:
        _clean_up(target)
        fingerprint = _fingerprint(collection, labels)
        options = {"size": size, "skip_bad": skip_bad, "draft": draft, "layout": collection.layout,
                   "labels": None if labels is None else str(Path(labels).resolve()), "split": list(split),
                   "seed": seed}
        if not force:
            with contextlib.suppress(DataError):
                info = load_info(out)
                if info.get("fingerprint") == fingerprint and info.get("options") == options:
                    log.info("%s is up to date with %s; nothing to do", out, isic_dir)
                    return info

        token = secrets.token_hex(8)
        started = time.perf_counter()
        staged = _staging_folder(target, token)
        committed = False
        try:
            info = _build(collection, staged, token, size=size, workers=workers, skip_bad=skip_bad, progress=progress,
                          draft=draft)
            info.update(source=str(isic_dir.resolve()), kind=_kind(isic_dir), fingerprint=fingerprint, options=options)
            write_json(info, staged / INFO_FILE)
            _commit(staged, target, token)
            committed = True
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):  # named by the cache, not its hidden staging
                raise OSError(exc.errno, exc.strerror, str(out)) from None
            raise
        finally:
            if not committed:  # the old cache, if any, is untouched
                shutil.rmtree(staged, ignore_errors=True)
        log.info(
            "prepared %s in %.1f s: %s%s",
            out, time.perf_counter() - started, ", ".join(f"{k} {v}" for k, v in info["counts"].items()),
            f"; {len(info['skipped'])} bad samples skipped" if info["skipped"] else "",
        )
        return info
    finally:
        lock.release()


def read_collection(
    isic_dir: Path, layout: str = "auto", *, labels: str | Path | None = None, split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> IsicCollection:
    """Read a collection of the given (or recognised) layout; see :func:`prepare` for the arguments."""
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if layout == "isic2018" or (layout == "auto" and isic2018.is_isic2018(isic_dir)):
        known = lesions = None
        if labels is not None:
            from .labels_only import read_labels

            table = read_labels(labels)
            known = {i: None if math.isnan(v) else int(v) for i, v in zip(table.ids, table.melanoma, strict=True)}
            lesions = dict(zip(table.ids, table.lesion_ids, strict=True)) if table.lesion_ids is not None else None
        return isic2018.read_collection(isic_dir, known, lesions=lesions, fractions=split, seed=seed)
    from .labels_only import is_image_folder, read_image_collection

    if layout == "images" or (layout == "auto" and labels is not None and is_image_folder(isic_dir)):
        if labels is None:  # a folder of images and a label CSV: HAM10000, ISIC 2018 Task 3, ISIC 2019, ISIC 2020
            raise DataError(f"{isic_dir}: a folder of images needs its label CSV (--labels)")
        return read_image_collection(isic_dir, labels, fractions=split, seed=seed)
    if labels is not None:
        raise DataError(f"{labels}: --labels applies to collections without labels of their own (ISIC 2018 "
                        f"Task 1-2); {isic_dir} has label CSVs")
    return isic2017.read_collection(isic_dir)


def _build(
    collection: IsicCollection, staged: Path, token: str, *, size: int, workers: int, skip_bad: bool, progress: bool,
    draft: bool,
) -> dict:
    """Write every split of ``collection`` into ``staged``; return the info dict (without its provenance keys)."""
    stats = _TrainingStats(len(collection.structures))
    counts: dict[str, int] = {}
    melanoma: dict[str, int] = {}
    labelled: dict[str, int] = {}
    skipped: list[dict[str, str]] = []
    for name in collection.splits:
        counts[name], split_skipped = _prepare_split(
            collection, name, staged / name, token, size=size, workers=workers, skip_bad=skip_bad,
            progress=progress, draft=draft, stats=stats if name == "train" else None,
        )
        skipped.extend(split_skipped)
        split_labels = np.load(staged / name / "labels.npy")
        melanoma[name] = int(np.nansum(split_labels))
        labelled[name] = int((~np.isnan(split_labels)).sum())
    if counts["train"] == 0:
        raise DataError(f"{collection.root}: no usable training sample ({len(skipped)} skipped)")

    mean, std = stats.mean_std()
    with_masks = collection.has_masks
    metadata_fields = {f for s in collection.splits.values() if s.metadata is not None for f in s.metadata.fields}
    return {
        "version": CACHE_VERSION,
        "token": token,
        "size": size,
        "splits": list(counts),
        "official_splits": {name: s.official for name, s in collection.splits.items()},
        "counts": counts,
        "melanoma": melanoma,
        "labelled": labelled,
        "layout": collection.layout,
        "has_masks": with_masks,
        "has_superpixels": collection.has_superpixels,
        "annotations": {"part1": collection.has_part1, "part2": collection.has_part2},
        "mean": mean,
        "std": std,
        "structures": list(collection.structures),
        "presences": stats.presences.tolist() if with_masks else None,
        "pixel_fraction": (stats.structure_pixels / stats.pixels).tolist() if with_masks else None,
        "skipped": skipped,
        "metadata": [f for f in FIELDS if f in metadata_fields],
    }
