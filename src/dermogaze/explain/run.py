"""``dermogaze explain``: a checkpoint on image files or a prepared split, and the files of each image.

Files written per image by :func:`save_explanation` (``<id>`` = image id, or file stem for a
user's image): ``<id>.json`` (the record of :func:`~dermogaze.explain.record.explain_record`),
``<id>_gazes.png`` (Figs. 7/8: gaze path, attention maps, per-step masks and structures) and, for
decoder variants, ``<id>_masks.png`` (Fig. 5: GT vs predicted masks). ``<id>`` is the id made
file-name safe (:func:`safe_name`); two inputs whose cleaned ids coincide (``a b.jpg`` and
``a_b.png``, or the same stem in two folders) get ``a_b`` and ``a_b_2`` (:func:`output_stems`), with
a warning, while each record keeps its original ``image_id``. (Names that differ only in letter case
are kept apart, as on a case-sensitive file system.)

A model whose outputs are NaN or infinite is refused before that image's files are written
(:func:`~dermogaze.explain.record.explain_image`).

What the model was trained on is logged once (:func:`~dermogaze.data.provenance.describe`) and recorded in every
record with the image's out-of-distribution score; :func:`summary_line` prints the score and the record's notes
(e.g. "trained on synthetic images: this diagnosis is a demonstration" for a photograph given to a model trained on
the synthetic data).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..config import Config
from ..data.cache import load_info, load_split
from ..data.images import check_image_file, load_user_image, normalise
from ..data.provenance import collection_kind, describe
from ..data.transforms import center_crop_slices
from ..errors import DataError, DermogazeError
from ..evaluation import plots
from ..files import write_json
from ..interrupt import check as check_interrupt
from ..metrics.ood import FeatureDistribution
from ..runtime import autocast_factory, resolve_device
from ..structures import SHORT_NAME
from ..training.checkpoint import check_structure_set, load_checkpoint, model_from_checkpoint
from .record import Explanation, cache_region, explain_image

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Files of one image
# ----------------------------------------------------------------------------------------------


def _title(record: Mapping[str, Any]) -> str:
    p = record["melanoma_probability"]
    text = f"{record['image_id']}:  P(melanoma) = {p:.3f} → {record['prediction']}"
    gt = record.get("ground_truth")
    if gt and gt["diagnosis"] is not None:
        text += f"   (GT: {gt['diagnosis']}, {'right' if gt['prediction_correct'] else 'wrong'})"
    return text


def save_explanation(expl: Explanation, out_dir: str | Path, stem: str | None = None) -> dict[str, Path]:
    """Write ``<id>.json``, ``<id>_gazes.png`` (variants with attention) and ``<id>_masks.png`` (decoder).

    Args:
        expl: from :func:`~dermogaze.explain.record.explain_image`.
        out_dir: destination folder (created).
        stem: the file names' ``<id>`` (default: ``safe_name`` of the image id; :func:`output_stems`
            makes them unique over several images).

    Returns:
        ``{"json": path, "gazes": path, "masks": path}`` for the files written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec = expl.record
    stem = stem or safe_name(rec["image_id"])
    files: dict[str, Path] = {}
    steps = rec["steps"]
    short = SHORT_NAME
    labels = [f"{short.get(s['structure'], s['structure'])} {s['structure_probability']:.2f}" if s["structure"] else ""
              for s in steps]
    correct = [s["structure_correct"] for s in steps]
    gt_labels = [short.get(s["gt_structure"], s["gt_structure"]) for s in steps]
    pred_classes = (
        [expl.structures.index(s["structure"]) for s in steps] if all(s["structure"] for s in steps) else None
    )
    mask_colors = None
    if pred_classes is not None:
        mask_colors = [plots.structure_color(expl.structures[k]) for k in pred_classes]
    if expl.attention is not None:
        points = [(s["gaze"]["x"], s["gaze"]["y"]) for s in steps]
        files["gazes"] = plots.plot_gazes(
            expl.image, expl.attention, points, out / f"{stem}_gazes.png", region=expl.region, masks=expl.masks,
            step_labels=labels, gt_labels=gt_labels if any(g is not None for g in gt_labels) else None,
            correct=correct, mask_colors=mask_colors, title=_title(rec),
        )
    if expl.masks is not None:
        files["masks"] = plots.plot_masks(
            expl.image, expl.masks, out / f"{stem}_masks.png", region=expl.region, gt_masks=expl.gt_masks,
            present=expl.present, structures=expl.structures, step_labels=labels, correct=correct,
            pred_classes=pred_classes, gt_labels=gt_labels if any(g is not None for g in gt_labels) else None,
            title=_title(rec),
        )
    rec = dict(rec, files={k: p.name for k, p in files.items()})
    files = {"json": write_json(rec, out / f"{stem}.json"), **files}
    expl.record = rec
    return files


def safe_name(image_id: str) -> str:
    """A file-name-safe version of an image id (letters, digits, ``._-``; others become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", image_id).strip(".") or "image"


# ----------------------------------------------------------------------------------------------
# Checkpoint → files
# ----------------------------------------------------------------------------------------------


def output_stems(ids: Sequence[str]) -> list[str]:
    """File-name stems of ``ids`` (:func:`safe_name`), unique: a stem already taken gets ``_2``, ``_3``...

    ``["a b", "a_b", "a_b"]`` → ``["a_b", "a_b_2", "a_b_3"]``: no image's files overwrite another's.
    """
    taken: set[str] = set()
    stems = []
    for image_id in ids:
        base = stem = safe_name(image_id)
        n = 1
        while stem in taken:
            n += 1
            stem = f"{base}_{n}"
        taken.add(stem)
        stems.append(stem)
    return stems


def renamed_outputs(records: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], str]]:
    """``(record, stem)`` of the records :func:`run_explain` saved under another stem than their cleaned id."""
    stems = output_stems([rec["image_id"] for rec in records])
    return [(rec, stem) for rec, stem in zip(records, stems, strict=True) if stem != safe_name(rec["image_id"])]


def _known_label(value: float) -> int | None:
    """A cached diagnosis label as an int, ``None`` when unknown (NaN: a structure-only collection)."""
    return None if np.isnan(value) else int(value)


def run_explain(
    checkpoint_path: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    data: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    *,
    device: str = "auto",
    amp: str = "off",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Explain image files, or images of a prepared split, with a trained checkpoint.

    Without ``data``, every input is an image file (checked before the model runs, so a bad file
    fails fast); ids are the file stems. With ``data`` (a prepared cache), the inputs are split
    names (``split`` adds one; ``test`` when none is given) and the ground truth of the cache is
    used. Output names are unique (:func:`output_stems`): an input whose cleaned id is taken is
    written as ``<id>_2``... with a warning, and its record keeps the original ``image_id``.

    Args:
        checkpoint_path: ``RUN/best.pt``.
        inputs: image files, or split names with ``data``.
        out_dir: destination folder.
        data: prepared cache folder, or None.
        split: a split name (with ``data``).
        limit: explain at most this many images in total.
        device: ``cpu``, ``cuda`` or ``auto``.
        amp: ``off``, ``bf16`` or ``fp16``: the forward pass's precision (:func:`dermogaze.runtime.effective_amp`).
        progress: show a progress bar.

    Returns:
        The records written (each with its ``files``).

    Raises:
        DermogazeError / DataError: unreadable checkpoint, missing cache or split, bad image file,
            a model whose outputs are NaN or infinite.
    """
    if limit is not None and limit < 1:
        raise DermogazeError(f"--limit must be at least 1, got {limit}")
    if data is None and split is not None:
        raise DermogazeError("--split needs --data (a prepared cache)")
    if data is None and not inputs:
        raise DermogazeError("nothing to explain: give image files, or --data CACHE with a split")
    ckpt = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(ckpt)
    dev = resolve_device(device)
    model.to(dev).eval()
    autocast = autocast_factory(dev, amp)
    image_size = int(ckpt["image_size"])
    mean, std = list(ckpt["mean"]), list(ckpt["std"])
    structures = tuple(ckpt["structures"])
    calibration = {k: float(ckpt["calibration"][k]) for k in ("threshold", "temperature")}
    loss = Config.from_dict(ckpt["config"], source=f"{checkpoint_path} config").loss  # its matching
    provenance = {"training_data": ckpt["training_data"],
                  "ood": None if ckpt["ood"] is None else FeatureDistribution.from_state(ckpt["ood"])}
    log.info("explain: %s was trained on %s%s", checkpoint_path, describe(ckpt["training_data"]),
             "" if ckpt["ood"] is not None else "; it has no out-of-distribution score")
    out = Path(out_dir)
    records: list[dict[str, Any]] = []

    jobs: list[tuple] = []  # (kind, payload)
    image_kind = None  # a user's image file
    if data is None:
        paths = [Path(p) for p in inputs]
        for p in paths:
            if p.is_dir():
                raise DataError(f"{p} is a folder: give image files (or --data CACHE and a split name)")
            check_image_file(p)  # fail fast, naming the file, before any work
        jobs = [("file", (p, p.stem)) for p in paths]
    else:
        info = load_info(data)
        check_structure_set(ckpt, info, data)
        image_kind = collection_kind(info)
        splits = [str(s) for s in inputs] + ([split] if split else [])
        for name in splits or ["test"]:
            if name not in info["splits"]:
                raise DataError(f"cache {data} has no split {name!r} (it holds {', '.join(info['splits'])})")
            arrays = load_split(data, name)
            jobs.extend(("split", (arrays, k, name, int(info["size"]))) for k in range(len(arrays)))
    if limit is not None:
        jobs = jobs[:limit]
    ids = [payload[1] if kind == "file" else payload[0].ids[payload[1]] for kind, payload in jobs]
    stems = output_stems(ids)
    for (kind, payload), image_id, stem in zip(jobs, ids, stems, strict=True):
        if stem != safe_name(image_id):
            source = payload[0] if kind == "file" else f"{image_id} of split {payload[2]}"
            log.warning("explain: %s would be written as %s.json, like an earlier input: writing it as %s.json",
                        source, safe_name(image_id), stem)

    bar = tqdm(jobs, desc="explain", unit="img", disable=not progress or len(jobs) < 2)
    for (kind, payload), stem in zip(bar, stems, strict=True):
        check_interrupt()
        if kind == "file":
            path, image_id = payload
            tensor, original = load_user_image(path, image_size, mean, std)
            expl = explain_image(
                model, tensor, original, image_id=image_id, image_path=str(path), structures=structures,
                model_source=str(checkpoint_path), loss=loss, autocast=autocast, **calibration, **provenance,
            )
        else:
            arrays, k, name, cache_size = payload
            region = cache_region(cache_size, image_size)
            rows, cols = center_crop_slices(cache_size, image_size)  # the crop the dataset applies
            image = np.asarray(arrays.images[k])  # (C, C, 3) cache image
            crop = image[rows, cols]  # (S, S, 3)
            gt = present = None
            if arrays.masks is not None:
                gt = np.asarray(arrays.masks[k][:, rows, cols]) > 0  # (K, S, S)
                present = gt.reshape(gt.shape[0], -1).any(axis=1)
            expl = explain_image(
                model, normalise(crop, mean, std), image, image_id=arrays.ids[k], image_path=f"{data}:{name}",
                region=region, gt_masks=gt, present=present, label=_known_label(arrays.labels[k]),
                structures=structures, model_source=str(checkpoint_path), loss=loss, autocast=autocast,
                image_kind=image_kind, **calibration, **provenance,
            )
        files = save_explanation(expl, out, stem)
        records.append(expl.record)
        log.debug("explained %s → %s", expl.record["image_id"], ", ".join(str(f) for f in files.values()))
    return records


# ----------------------------------------------------------------------------------------------
# Terminal
# ----------------------------------------------------------------------------------------------


def summary_line(rec: Mapping[str, Any]) -> str:
    """For the terminal: one line with the id, P(melanoma), ground truth, the out-of-distribution distance and the
    gaze path, then each of the record's notes on a line of its own."""
    gazes = " → ".join(
        f"({s['gaze']['x']},{s['gaze']['y']})" + (f" {s['structure']}" if s["structure"] else "")
        for s in rec["steps"]
        if s["gaze"] is not None
    )
    gt = rec.get("ground_truth")
    truth = f" [GT {gt['diagnosis']}]" if gt and gt["diagnosis"] is not None else ""
    line = f"{rec['image_id']}: P(melanoma) {rec['melanoma_probability']:.3f}{truth}"
    ood = rec.get("ood")
    if ood:
        line += (f"  OOD distance {ood['distance']:.2f} " + ("> " if ood["out_of_distribution"] else "<= ")
                 + f"{ood['threshold']:.2f}" + (" (out of distribution)" if ood["out_of_distribution"] else ""))
    line += f"  gazes {gazes}" if gazes else ""
    return "\n".join([line, *(f"  note: {n}" for n in rec.get("notes") or ())])
