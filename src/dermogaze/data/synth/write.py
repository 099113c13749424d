"""Write synthetic lesions in exactly the ISIC 2017 layout (docs/design.md §2, §8), or in the ISIC 2018 Task 1-2 one.

The files are written the way the official zips unzip, so that the one ISIC reader
(``dermogaze data prepare``) handles them::

    ISIC-2017_<split>_Data/ISIC_<id>.jpg                        the picture (JPEG, quality 92)
    ISIC-2017_<split>_Data/ISIC_<id>_superpixels.png            SLIC0 superpixels, index = R + (G<<8) + (B<<16)
    ISIC-2017_<split>_Data/ISIC-2017_<split>_Data_metadata.csv  image_id,age_approximate,sex
    ISIC-2017_<split>_Part1_GroundTruth/ISIC_<id>_segmentation.png  lesion mask, 0/255
    ISIC-2017_<split>_Part2_GroundTruth/ISIC_<id>_features.json     {feature: [0/1 per superpixel]}
    ISIC-2017_<split>_Part3_GroundTruth.csv                     image_id,melanoma,seborrheic_keratosis (0.0/1.0)
    ISIC-2017_<split>_synth_truth.json                          extra sidecar: the drawn cues (readers ignore it)

In the ISIC 2018 layout (:func:`write_synthetic_isic` with ``layout="isic2018"``) the same lesions
go to ``ISIC2018_Task1-2_<split>_Input``, ``ISIC2018_Task1_<split>_GroundTruth`` and one Task 2
pixel mask per attribute in ``ISIC2018_Task2_<split>_GroundTruth_v3``, with the sidecar
``ISIC2018_<split>_synth_truth.json`` and the diagnosis of every split in
``ISIC2018_synth_labels.csv`` (:func:`labels_path`).

Ids are 7 digits, unique across splits: Training ``0000000 + i``, Validation ``1000000 + i``,
Test_v2/Test ``2000000 + i``.

Writing is atomic per split: everything is written into a hidden temporary folder inside
``out_dir`` and moved into place at the end, the Part 3 CSV (the index of the split) last, so an
interrupted run never leaves a split that looks complete. Existing split folders are replaced only
if they were written by this generator (their sidecar exists); anything else is refused. Synthetic
splits of an earlier run that the new run does not write are removed (one folder, one dataset).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import dataclasses
import functools
import io
import json
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ...config import SYNTH_MAX_COUNT, SYNTH_MAX_SIDE, SYNTH_MIN_SIDE
from ...errors import DermogazeError
from ...files import write_csv
from ...structures import DERMOSCOPIC_FEATURES
from ..metadata import UNKNOWN
from .render import make_sample
from .sample import (
    GLOBULES_PREVALENCE,
    globule_rng,
    image_rng,
    patient_rng,
    resolve_prevalences,
    sample_params,
    sample_patient,
)
from .superpixels import encode_superpixels

logger = logging.getLogger(__name__)

#: Images per official split when ``counts`` is not given.
DEFAULT_COUNTS: dict[str, int] = {"Training": 200, "Validation": 50, "Test_v2": 100}

#: Official split names of each layout.
LAYOUT_SPLITS: dict[str, tuple[str, ...]] = {
    "isic2017": ("Training", "Validation", "Test_v2", "Test"),
    "isic2018": ("Training", "Validation", "Test"),
}

_ID_BASE = {"Training": 0, "Validation": 1_000_000, "Test_v2": 2_000_000, "Test": 2_000_000}
_JPEG_QUALITY = 92


def image_id(split: str, index: int) -> str:
    """``ISIC_<7 digits>``, unique across splits (Training 0…, Validation 1…, Test_v2/Test 2…)."""
    return f"ISIC_{_ID_BASE[split] + index:07d}"


def truth_path(root: str | os.PathLike, split: str, layout: str = "isic2017") -> Path:
    """Path of a split's sidecar with the drawn cues (``ISIC-2017_<split>_synth_truth.json``, or
    ``ISIC2018_<split>_synth_truth.json``)."""
    return Path(root) / (f"ISIC2018_{split}_synth_truth.json" if layout == "isic2018"
                         else f"ISIC-2017_{split}_synth_truth.json")


def is_synthetic_collection(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds a split written by :func:`write_synthetic_isic` (the sidecar of any split, either
    layout): how ``prepare`` tells the built-in synthetic data from a real collection."""
    return any(truth_path(root, split, layout).is_file()
               for layout, splits in LAYOUT_SPLITS.items() for split in splits)


def labels_path(root: str | os.PathLike) -> Path:
    """The diagnosis CSV (``image_id,melanoma``, every split) written beside a synthetic ISIC 2018 collection,
    for ``prepare --labels``."""
    return Path(root) / "ISIC2018_synth_labels.csv"


def _split_entries(split: str, layout: str = "isic2017") -> list[str]:
    """A split's top-level entries, in publishing order (the split's index, last; then the sidecar for 2018)."""
    if layout == "isic2018":
        return [f"ISIC2018_Task1_{split}_GroundTruth", f"ISIC2018_Task2_{split}_GroundTruth_v3",
                truth_path("", split, layout).name,
                f"ISIC2018_Task1-2_{split}_Input"]
    return [f"ISIC-2017_{split}_Data", f"ISIC-2017_{split}_Part1_GroundTruth", f"ISIC-2017_{split}_Part2_GroundTruth",
            f"ISIC-2017_{split}_synth_truth.json", f"ISIC-2017_{split}_Part3_GroundTruth.csv"]


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=_JPEG_QUALITY)
    return buf.getvalue()


def _check_args(counts: Mapping[str, int], image_size) -> tuple[dict[str, int], tuple[int, int]]:
    out = {}
    for split, n in counts.items():
        if split not in _ID_BASE:
            raise DermogazeError(f"unknown split {split!r}: expected some of Training, Validation, Test_v2 (or Test)")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= SYNTH_MAX_COUNT:
            raise DermogazeError(f"count for {split} must be an integer in [0, {SYNTH_MAX_COUNT}], got {n!r}")
        out[split] = int(n)
    if "Test" in out and "Test_v2" in out:
        raise DermogazeError("give either Test_v2 or Test, not both (they share the test id range)")
    try:
        w, h = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise DermogazeError(f"image_size must be (width, height), got {image_size!r}") from None
    if not (SYNTH_MIN_SIDE <= w <= SYNTH_MAX_SIDE and SYNTH_MIN_SIDE <= h <= SYNTH_MAX_SIDE):
        raise DermogazeError(f"image_size must be from {SYNTH_MIN_SIDE} to {SYNTH_MAX_SIDE} px a side, got {w}×{h}")
    return out, (w, h)


#: Rendering runs in this many processes at most (each image is drawn from its own seeded generators, so the
#: bytes do not depend on the number), and in one when fewer than :data:`PARALLEL_MIN_IMAGES` are written.
MAX_WORKERS = 8
PARALLEL_MIN_IMAGES = 64


def _render_2017(split: str, i: int, image_size: tuple[int, int], seed: int,
                 prevalences: dict[str, float]) -> tuple[dict[str, bytes], tuple, tuple, dict]:
    """Image ``i`` of a 2017 split: its files by folder role (``data``, ``superpixels``, ``part1``, ``part2``),
    its Part 3 row, its metadata row and its sidecar record."""
    rng = image_rng(seed, split, i)
    params = sample_params(rng, prevalences)
    sample = make_sample(params, image_size, rng)
    iid = image_id(split, i)
    files = {
        "data": _jpeg_bytes(sample.image),
        "superpixels": _png_bytes(encode_superpixels(sample.superpixels)),
        "part1": _png_bytes(sample.lesion.astype(np.uint8) * 255),
        "part2": json.dumps(sample.features).encode(),
    }
    age, sex = sample_patient(patient_rng(seed, split, i))
    record = {k: v for k, v in asdict(params).items() if k not in ("globules", "globule_seed")}  # 2018 only
    record["n_superpixels"] = int(sample.superpixels.max()) + 1
    label = (iid, float(params.melanoma), float(params.seborrheic_keratosis))
    meta = (iid, UNKNOWN if age is None else age, UNKNOWN if sex is None else sex)
    return files, label, meta, record


def _render_2018(split: str, i: int, image_size: tuple[int, int], seed: int,
                 prevalences: dict[str, float]) -> tuple[dict[str, bytes], dict]:
    """Image ``i`` of a 2018 split: its files (``data``, ``part1``, then one per attribute) and sidecar record."""
    from ..isic2018 import ATTRIBUTES

    rng = image_rng(seed, split, i)
    params = sample_params(rng, {k: v for k, v in prevalences.items() if k != "globules"})
    grng = globule_rng(seed, split, i)
    params = dataclasses.replace(params, globules=bool(grng.random() < prevalences["globules"]),
                                 globule_seed=int(grng.integers(2**32)))
    sample = make_sample(params, image_size, rng)
    order = DERMOSCOPIC_FEATURES + ("globules",)  # the channels of SynthSample.structures
    files = {"data": _jpeg_bytes(sample.image), "part1": _png_bytes(sample.lesion.astype(np.uint8) * 255)}
    for name in ATTRIBUTES:
        files[name] = _png_bytes(sample.structures[order.index(name)].astype(np.uint8) * 255)
    return files, asdict(params)


def _rendered(render, split: str, n: int, pool: concurrent.futures.Executor | None, **kwargs):
    """``render(split, i, **kwargs)`` for ``i`` in ``range(n)``, in order: in this process, or over ``pool``."""
    if pool is None:
        return (render(split, i, **kwargs) for i in range(n))
    return pool.map(functools.partial(render, split, **kwargs), range(n), chunksize=8)


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[concurrent.futures.Executor | None]:
    """A pool of ``workers`` forked processes, as torch's data loader forks its workers (spawned ones would run
    the caller's main script again), or ``None`` for one or where processes cannot fork. The workers ignore
    Ctrl-C: the parent alone stops, cancels what is left and says so once."""
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        yield None
        return
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("fork"), initializer=_ignore_interrupt
    )
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _ignore_interrupt() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _write_split(tmp: Path, split: str, n: int, *, image_size: tuple[int, int], seed: int,
                 prevalences: dict[str, float], bar: tqdm, pool: concurrent.futures.Executor | None = None) -> None:
    data = tmp / f"ISIC-2017_{split}_Data"
    part1 = tmp / f"ISIC-2017_{split}_Part1_GroundTruth"
    part2 = tmp / f"ISIC-2017_{split}_Part2_GroundTruth"
    for folder in (data, part1, part2):
        folder.mkdir()
    labels, meta, truth = [], [], {}
    images = _rendered(_render_2017, split, n, pool, image_size=image_size, seed=seed, prevalences=prevalences)
    for i, (files, label, row, record) in enumerate(images):
        iid = image_id(split, i)
        (data / f"{iid}.jpg").write_bytes(files["data"])
        (data / f"{iid}_superpixels.png").write_bytes(files["superpixels"])
        (part1 / f"{iid}_segmentation.png").write_bytes(files["part1"])
        (part2 / f"{iid}_features.json").write_bytes(files["part2"])
        labels.append(label)
        meta.append(row)
        truth[iid] = record
        bar.update(1)

    with open(data / f"ISIC-2017_{split}_Data_metadata.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image_id", "age_approximate", "sex"])
        writer.writerows(meta)
    _write_sidecar(tmp, split, "isic2017", seed=seed, image_size=image_size, prevalences=prevalences, truth=truth)
    with open(tmp / f"ISIC-2017_{split}_Part3_GroundTruth.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image_id", "melanoma", "seborrheic_keratosis"])
        writer.writerows(labels)


def _write_split_2018(tmp: Path, split: str, n: int, *, image_size: tuple[int, int], seed: int,
                      prevalences: dict[str, float], bar: tqdm,
                      pool: concurrent.futures.Executor | None = None) -> None:
    """One split in the ISIC 2018 Task 1-2 layout: the same lesions as :func:`_write_split`, with globules."""
    from ..isic2018 import ATTRIBUTES, attribute_suffix

    data = tmp / f"ISIC2018_Task1-2_{split}_Input"
    part1 = tmp / f"ISIC2018_Task1_{split}_GroundTruth"
    part2 = tmp / f"ISIC2018_Task2_{split}_GroundTruth_v3"
    for folder in (data, part1, part2):
        folder.mkdir()
    truth = {}
    images = _rendered(_render_2018, split, n, pool, image_size=image_size, seed=seed, prevalences=prevalences)
    for i, (files, record) in enumerate(images):
        iid = image_id(split, i)
        (data / f"{iid}.jpg").write_bytes(files["data"])
        (part1 / f"{iid}_segmentation.png").write_bytes(files["part1"])
        for name in ATTRIBUTES:
            (part2 / f"{iid}{attribute_suffix(name)}").write_bytes(files[name])
        truth[iid] = record
        bar.update(1)
    _write_sidecar(tmp, split, "isic2018", seed=seed, image_size=image_size, prevalences=prevalences, truth=truth)


def _write_labels_2018(out: Path) -> None:
    """``ISIC2018_synth_labels.csv`` from the sidecars of the synthetic 2018 splits in ``out`` (removed when none)."""
    rows = []
    for split in LAYOUT_SPLITS["isic2018"]:
        path = truth_path(out, split, "isic2018")
        if path.is_file():
            rows += [(iid, int(p["melanoma"])) for iid, p in json.loads(path.read_text())["samples"].items()]
    if rows:
        write_csv(["image_id", "melanoma"], rows, labels_path(out))
    else:
        labels_path(out).unlink(missing_ok=True)


def _write_sidecar(tmp: Path, split: str, layout: str, *, seed: int, image_size: tuple[int, int],
                   prevalences: dict[str, float], truth: dict) -> None:
    """The split's sidecar (:func:`truth_path`): the generator's settings and every lesion's parameters."""
    tag = {"layout": layout} if layout != "isic2017" else {}  # the 2017 sidecar keeps its original keys
    sidecar = {"generator": "dermogaze.data.synth", "version": 1, **tag, "split": split, "seed": int(seed),
               "image_size": list(image_size), "prevalences": prevalences,
               "rule": "melanoma = asymmetric + colour_variety + blue_grey_veil >= 2", "samples": truth}
    truth_path(tmp, split, layout).write_text(json.dumps(sidecar, indent=1))


def _publish(tmp: Path, out_dir: Path, split: str, layout: str = "isic2017") -> None:
    """Move a finished split from ``tmp`` into ``out_dir``, replacing an older synthetic copy.

    The old index of the split (the Part 3 CSV; the 2018 Input folder) goes first and the new one
    comes last, so the split never looks complete while folders are being swapped.
    """
    entries = _split_entries(split, layout)
    index = out_dir / entries[-1]
    if index.is_dir():
        shutil.rmtree(index)
    elif index.exists():
        index.unlink()
    for name in entries:
        src, dest = tmp / name, out_dir / name
        if dest.exists():
            trash = Path(tempfile.mkdtemp(prefix=".synth-old-", dir=out_dir))
            os.replace(dest, trash / name)
            shutil.rmtree(trash)
        os.replace(src, dest)


def _remove_split(out_dir: Path, split: str, layout: str = "isic2017") -> None:
    """Delete a synthetic split, its index first and its sidecar (the mark of ownership) last."""
    entries = _split_entries(split, layout)
    for name in [entries[-1], *entries[:-2], entries[-2]]:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def write_synthetic_isic(
    out_dir: str | os.PathLike,
    *,
    counts: Mapping[str, int] | None = None,
    image_size: tuple[int, int] = (320, 240),
    seed: int = 0,
    prevalences: Mapping[str, float] | None = None,
    progress: bool = True,
    layout: str = "isic2017",
    workers: int | None = None,
) -> Path:
    """Write a synthetic dataset in the ISIC 2017 layout (docs/design.md §2, §8), or the 2018 one.

    With ``layout="isic2018"`` the same lesions (same seed → same pictures, cues and four
    structures) are written in the ISIC 2018 Task 1-2 layout (docs/design.md §2b): the Input folder, the Task 1
    lesion mask and one Task 2 pixel mask per attribute (the drawn regions), plus *globules* drawn as
    clusters of small dark dots in :data:`GLOBULES_PREVALENCE` of the images, from a stream of their
    own (:func:`globule_rng`). The diagnosis goes to ``ISIC2018_<split>_synth_labels.csv``
    (``image_id,melanoma``, for ``prepare --labels``), as Task 1-2 ships no labels. Splits are
    Training, Validation and Test (``Test_v2`` of the default counts becomes ``Test``).

    Args:
        out_dir: folder to write into (created if missing). Split entries already there are
            replaced only if this generator wrote them (their sidecar exists); synthetic splits of
            an earlier run that this run does not write are removed, so the folder holds one
            dataset. Other files are left alone.
        counts: images per official split name (``Training``, ``Validation``, ``Test_v2`` or
            ``Test``); default :data:`DEFAULT_COUNTS`. A count of 0 skips the split; at most
            :data:`~dermogaze.config.SYNTH_MAX_COUNT`.
        image_size: ``(width, height)`` of every picture, :data:`~dermogaze.config.SYNTH_MIN_SIDE` to
            :data:`~dermogaze.config.SYNTH_MAX_SIDE` px a side.
        seed: the dataset seed; same seed → same bytes.
        prevalences: overrides of :data:`DEFAULT_PREVALENCES`: fractions in [0, 1] for any of the
            four features and ``"melanoma"``.
        progress: show a tqdm progress bar.
        layout: ``"isic2017"`` or ``"isic2018"``.
        workers: processes that render (default: one per CPU this process may use, at most
            :data:`MAX_WORKERS`; one for fewer than :data:`PARALLEL_MIN_IMAGES` images). The files are the
            same whatever the number.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        DermogazeError: an unknown split or prevalence key, a bad count, size or value, or an
            existing split folder not written by this generator.
    """
    out = Path(out_dir)
    if layout not in LAYOUT_SPLITS:
        raise DermogazeError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUT_SPLITS)}")
    if counts is None and layout == "isic2018":
        counts = {("Test" if k == "Test_v2" else k): v for k, v in DEFAULT_COUNTS.items()}
    split_counts, size = _check_args(DEFAULT_COUNTS if counts is None else counts, image_size)
    unknown = [split for split in split_counts if split not in LAYOUT_SPLITS[layout]]
    if unknown:
        raise DermogazeError(
            f"unknown {layout} split {unknown[0]!r}: expected some of {', '.join(LAYOUT_SPLITS[layout])}"
        )
    prev = resolve_prevalences(prevalences)
    if layout == "isic2018":
        prev["globules"] = GLOBULES_PREVALENCE
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DermogazeError(f"seed must be a non-negative integer, got {seed!r}")
    todo = {split: n for split, n in split_counts.items() if n > 0}
    for split in split_counts:
        if split not in todo:
            logger.info("synth: count 0 for %s, split not written", split)

    out.mkdir(parents=True, exist_ok=True)
    for split in todo:
        existing = [name for name in _split_entries(split, layout) if (out / name).exists()]
        if existing and not truth_path(out, split, layout).is_file():
            raise DermogazeError(f"{out / existing[0]} exists and was not written by dermogaze's synthetic "
                                 f"generator (no {truth_path(out, split, layout).name}); refusing to overwrite it")

    for other in LAYOUT_SPLITS:  # earlier synthetic splits that this run does not write would mix two datasets
        for split in LAYOUT_SPLITS[other]:
            if (other != layout or split not in todo) and truth_path(out, split, other).is_file():
                logger.info("synth: removing the synthetic %s split of an earlier run from %s", split, out)
                _remove_split(out, split, other)
    write = _write_split_2018 if layout == "isic2018" else _write_split
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)), MAX_WORKERS) if hasattr(os, "sched_getaffinity") else 1
    procs = max(1, int(workers)) if sum(todo.values()) >= PARALLEL_MIN_IMAGES else 1

    with _pool(procs) as pool, tqdm(total=sum(todo.values()), desc="synth", unit="img", disable=not progress) as bar:
        for split, n in todo.items():
            tmp = Path(tempfile.mkdtemp(prefix=f".synth-{split}-", dir=out))
            try:
                write(tmp, split, n, image_size=size, seed=int(seed), prevalences=prev, bar=bar, pool=pool)
                _publish(tmp, out, split, layout)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            logger.info("synth: wrote %d %s images (%d×%d) to %s", n, split, size[0], size[1], out)
    _write_labels_2018(out)
    return out
