"""Explanations (SPEC §7, paper §4.4): sequences of gazes, JSON records and figures per image.

The gaze of step ``t`` is the arg-max cell of the attention map ``A_t`` (Eq. 2), mapped to the
image's own pixel coordinates. With it, each step reports its predicted structure and mask, and
the image its melanoma probability; with ground truth, the GT structure of each step (SPEC §6
pairing: highest soft IoU) and the GT diagnosis.

Geometry (decisions where the paper is silent):

* The network sees an *input region* of the image, written ``(top, left, bottom, right)`` as
  fractions of the image height and width, resized to ``image_size × image_size``.
* A user's own image (any size, any aspect ratio) is resized *whole* to the model size, without a
  crop (:func:`load_user_image`): the region is the full image, so every gaze maps back inside
  it. (Training saw the central 224/256 of each image; the whole-image view trades that small
  scale difference for never cutting off a border the user cares about.)
* A prepared split only keeps the cache image (``resize(256) + center-crop(224)`` of the original),
  so its gazes are given in the cache image's pixels; the region is the center crop
  (:func:`cache_region`). The original image size is not stored in the cache.
* Cell ``(i, j)`` of an ``h × w`` attention map covers the fractions ``[i/h, (i+1)/h)`` and
  ``[j/w, (j+1)/w)`` of the region; the gaze is the pixel containing the cell's *center*:
  ``x = floor((left + (j + 0.5) / w · (right - left)) · W)`` (likewise ``y``), clipped to
  ``[0, W-1]``. Coordinates are 0-based integers, ``x`` = column, ``y`` = row, origin top-left.
* Ties in the attention (e.g. the uniform first map of an untrained model, ``V_a = 0``) go to the
  first cell in row-major order, as ``numpy.argmax`` does.
* Mask areas: ``mask_area_fraction`` is the fraction of the network input where ``M_t >= 0.5``;
  ``mask_area_pixels`` is that fraction of the input region's area in image pixels.

Files written per image by :func:`save_explanation` (``<id>`` = image id, or file stem for a
user's image): ``<id>.json`` (the record), ``<id>_gazes.png`` (Figs. 7/8: gaze path, attention
maps, per-step masks and structures) and, for decoder variants, ``<id>_masks.png`` (Fig. 5: GT vs
predicted masks). ``<id>`` is the id made file-name safe (:func:`safe_name`); two inputs whose
cleaned ids coincide (``a b.jpg`` and ``a_b.png``, or the same stem in two folders) get ``a_b``
and ``a_b_2`` (:func:`output_stems`), with a warning, while each record keeps its original
``image_id``. (Names that differ only in letter case are kept apart, as on a case-sensitive file
system.)

A model whose outputs are NaN or infinite (corrupt weights, a diverged run) is refused with one
line naming the checkpoint and the image (:func:`dermogaze.metrics.check_finite_outputs`),
before that image's files are written.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import plots
from .config import Config, LossConfig
from .data.cache import load_info, load_split
from .data.images import check_image_file, load_user_image, normalise
from .data.transforms import center_crop_box, center_crop_slices
from .errors import DataError, DermogazeError
from .explanation import hungarian_steps, pointing_and_relevance
from .io import to_jsonable, write_json
from .losses import area_fraction, pairwise_soft_iou_loss
from .metrics import BINARY_THRESHOLD, check_finite_outputs, pair_with_ground_truth
from .plots import FULL_REGION
from .runtime import resolve_device
from .structures import SHORT_NAME, STRUCTURES
from .training.checkpoint import check_structure_set, load_checkpoint, model_from_checkpoint

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


def cache_region(cache_size: int, image_size: int) -> tuple[float, float, float, float]:
    """Input region of a cached image: the ``image_size`` center crop of a ``cache_size`` square.

    Uses :func:`dermogaze.data.transforms.center_crop_box`, the crop the dataset applies.

    Returns:
        ``(top, left, bottom, right)`` as fractions of the cache image.
    """
    if image_size > cache_size:
        raise DermogazeError(f"model input {image_size} px is larger than the cached images ({cache_size} px)")
    top, left = center_crop_box(cache_size, image_size)
    return (top / cache_size, left / cache_size, (top + image_size) / cache_size, (left + image_size) / cache_size)


def gaze_points(
    attention: np.ndarray, image_hw: tuple[int, int], region: Sequence[float] = FULL_REGION
) -> list[tuple[int, int]]:
    """Gaze of each step: the arg-max cell of ``A_t`` mapped to image pixels (paper §4.4, Fig. 7).

    Args:
        attention: ``(T, h, w)`` attention maps (a tensor or array).
        image_hw: ``(H, W)`` of the image whose pixel coordinates are returned.
        region: the part of that image the network saw, ``(top, left, bottom, right)`` fractions
            (default: the whole image).

    Returns:
        T tuples ``(x, y)``: 0-based pixel column and row of each gaze, inside the image.
    """
    att = attention.detach().float().cpu().numpy() if isinstance(attention, torch.Tensor) else np.asarray(attention)
    if att.ndim != 3:
        raise ValueError(f"attention must be (T, h, w), got shape {att.shape}")
    t_steps, h, w = att.shape
    height, width = int(image_hw[0]), int(image_hw[1])
    top, left, bottom, right = (float(v) for v in region)
    flat = att.reshape(t_steps, h * w)  # (T, h*w)
    cells = np.argmax(flat, axis=1)  # (T,) first maximum in row-major order
    points = []
    for c in cells:
        i, j = divmod(int(c), w)
        fy = top + (i + 0.5) / h * (bottom - top)
        fx = left + (j + 0.5) / w * (right - left)
        x = min(max(math.floor(fx * width), 0), width - 1)
        y = min(max(math.floor(fy * height), 0), height - 1)
        points.append((x, y))
    return points


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------


def _np(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach()
        return (x.float() if x.is_floating_point() else x).cpu().numpy()
    return np.asarray(x)


def explain_record(
    *,
    image_id: str,
    melanoma_prob: float,
    image_hw: tuple[int, int],
    attention: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    structure_probs: np.ndarray | None = None,
    region: Sequence[float] = FULL_REGION,
    gt_masks: np.ndarray | None = None,
    present: np.ndarray | None = None,
    label: int | None = None,
    image_path: str | None = None,
    structures: Sequence[str] = STRUCTURES,
    threshold: float = BINARY_THRESHOLD,
    loss: LossConfig | None = None,
) -> dict[str, Any]:
    """The JSON record of one image (SPEC §7).

    Keys: ``image_id``, ``image_path``, ``image_size`` ``{width, height}``, ``input_region``
    ``{x0, y0, x1, y1}`` (image pixels, edges), ``melanoma_probability``, ``prediction``
    (``"melanoma"`` when the probability is ``>= threshold``, else ``"benign"``), ``threshold``,
    ``ground_truth`` (``None``, or ``{diagnosis, label, prediction_correct, structures_present}``; the first
    three ``None`` when only the structures are known),
    ``n_steps`` and ``steps``: one dict per step with ``step`` (1-based), ``gaze`` ``{x, y}``,
    ``attention`` (value of ``A_t`` at the gaze), ``attention_vs_uniform`` (that value times
    ``h·w``: 1 = no preference), ``structure`` and ``structure_probability`` (arg-max of
    ``softmax(pred_t)``), ``structure_probabilities`` (one per structure), ``mask_area_fraction``,
    ``mask_area_pixels``, ``gt_structure`` and ``structure_correct``, and the SPEC §6b measures
    (:mod:`dermogaze.explanation`): ``matched_structure`` (the loss's Hungarian matching, ``loss``'s,
    which may differ from ``gt_structure``'s highest-IoU pairing), ``pointing_hit`` (the attention peak lies on
    that structure, one cell of tolerance) and ``relevance_mass`` (``Σ A_t·m_s``). Values a variant
    cannot produce (no attention, no decoder, no ground truth, an unmatched step) are ``None``.

    Args:
        image_id: image identifier.
        melanoma_prob: probability of melanoma.
        image_hw: ``(H, W)`` of the image the coordinates refer to.
        attention: ``(T, h, w)`` or None.
        masks: ``(T, S, S)`` mask probabilities over the input region, or None.
        structure_probs: ``(T, K)`` softmax of the structure logits (K structures), or None.
        region: input region, fractions ``(top, left, bottom, right)``.
        gt_masks: ``(K, S, S)`` GT masks over the input region, or None.
        present: ``(K,)`` bool, or None (derived from ``gt_masks``).
        label: GT diagnosis (1 = melanoma, 0 = benign) or None.
        image_path: the file the image came from, if any.
        structures: structure names.
        threshold: decision threshold on the melanoma probability.
        loss: the model's loss section (its checkpoint's), whose Hungarian matching gives
            ``matched_structure``; ``None``: the paper's matching (masks only).

    Returns:
        A dict of JSON types only.
    """
    att, masks, sprobs, gt = _np(attention), _np(masks), _np(structure_probs), _np(gt_masks)
    height, width = int(image_hw[0]), int(image_hw[1])
    top, left, bottom, right = (float(v) for v in region)
    region_px = (bottom - top) * height * (right - left) * width
    n_steps = next((a.shape[0] for a in (att, masks, sprobs) if a is not None), 0)

    points = gaze_points(att, (height, width), region) if att is not None else [None] * n_steps
    if gt is not None:
        pres = (np.asarray(present, dtype=bool) if present is not None else gt.reshape(gt.shape[0], -1).any(1))
        has_gt_structures = bool(pres.any())
    else:
        pres, has_gt_structures = None, False
    paired = pair_with_ground_truth(gt, pres, masks) if has_gt_structures and masks is not None else None
    pointing = None
    if has_gt_structures and att is not None and masks is not None:
        pointing = _step_pointing(att, masks, gt, pres, loss)

    steps = []
    for t in range(n_steps):
        step: dict[str, Any] = {"step": t + 1}
        if att is not None:
            flat = att[t].reshape(-1)  # (h*w,)
            value = float(flat.max())
            step.update(gaze={"x": points[t][0], "y": points[t][1]}, attention=value,
                        attention_vs_uniform=value * flat.size)
        else:
            step.update(gaze=None, attention=None, attention_vs_uniform=None)
        if sprobs is not None:
            k = int(np.argmax(sprobs[t]))
            step.update(structure=structures[k], structure_probability=float(sprobs[t, k]),
                        structure_probabilities={s: float(p) for s, p in zip(structures, sprobs[t], strict=True)})
        else:
            step.update(structure=None, structure_probability=None, structure_probabilities=None)
        if masks is not None:
            frac = float(np.mean(masks[t] >= BINARY_THRESHOLD))
            step.update(mask_area_fraction=frac, mask_area_pixels=int(round(frac * region_px)))
        else:
            step.update(mask_area_fraction=None, mask_area_pixels=None)
        if paired is not None:
            gt_name = structures[int(paired[t])]
            step.update(gt_structure=gt_name,
                        structure_correct=None if step["structure"] is None else step["structure"] == gt_name)
        else:
            step.update(gt_structure=None, structure_correct=None)
        step.update(_pointing(t, pointing, structures))
        steps.append(step)

    predicted = "melanoma" if melanoma_prob >= threshold else "benign"
    ground_truth = None
    if label is not None or pres is not None:  # an unknown diagnosis (None) still has its GT structures
        truth = None if label is None else "melanoma" if int(label) == 1 else "benign"
        ground_truth = {
            "diagnosis": truth,
            "label": None if label is None else int(label),
            "prediction_correct": None if truth is None else truth == predicted,
            "structures_present": [s for s, p in zip(structures, pres, strict=True) if p] if pres is not None else None,
        }
    record = {
        "image_id": str(image_id),
        "image_path": None if image_path is None else str(image_path),
        "image_size": {"width": width, "height": height},
        "input_region": {"x0": left * width, "y0": top * height, "x1": right * width, "y1": bottom * height},
        "melanoma_probability": float(melanoma_prob),
        "prediction": predicted,
        "threshold": float(threshold),
        "ground_truth": ground_truth,
        "n_steps": n_steps,
        "steps": steps,
    }
    return to_jsonable(record)


def _step_pointing(
    att: np.ndarray, masks: np.ndarray, gt: np.ndarray, present: np.ndarray, loss: LossConfig | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each step's matched structure (the loss's Hungarian matching, -1 = none), pointing hit and relevance mass.

    The SPEC §6b measures of :mod:`dermogaze.explanation` for one image: ``(T,)`` arrays.
    """
    a = torch.from_numpy(np.ascontiguousarray(att, dtype=np.float32))[None]  # (1, T, h, w)
    g = torch.from_numpy(np.ascontiguousarray(gt, dtype=np.float32))[None]  # (1, S, H, W)
    hit, relevance, _ = pointing_and_relevance(a, area_fraction(g, tuple(a.shape[-2:])))  # (1, T, S) each
    cost = pairwise_soft_iou_loss(torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))[None], g)
    matched = hungarian_steps(cost, torch.from_numpy(np.asarray(present, dtype=bool))[None], relevance, loss)[0]
    s = matched.clamp(min=0)
    steps = torch.arange(len(s))
    return matched.numpy(), hit[0, steps, s].numpy(), relevance[0, steps, s].numpy()


def _pointing(t: int, pointing: tuple[np.ndarray, np.ndarray, np.ndarray] | None, structures: Sequence[str]) -> dict:
    """The step's ``matched_structure``, ``pointing_hit`` and ``relevance_mass`` (``None`` without ground truth)."""
    if pointing is None or pointing[0][t] < 0:
        return {"matched_structure": None, "pointing_hit": None, "relevance_mass": None}
    matched, hit, relevance = pointing
    return {"matched_structure": structures[int(matched[t])], "pointing_hit": bool(hit[t]),
            "relevance_mass": float(relevance[t])}


# ----------------------------------------------------------------------------------------------
# Running a model on one image
# ----------------------------------------------------------------------------------------------


@dataclass
class Explanation:
    """One explained image: the record and the arrays its figures are drawn from.

    Attributes:
        record: :func:`explain_record` output.
        image: ``(H, W, 3)`` uint8, the image in its own pixels.
        region: input region (fractions).
        attention: ``(T, h, w)`` or None; masks: ``(T, S, S)`` or None; structure_probs: ``(T, K)``
            or None; gt_masks: ``(K, S, S)`` or None; present: ``(K,)`` or None (K structures).
    """

    record: dict[str, Any]
    image: np.ndarray
    region: tuple[float, float, float, float]
    attention: np.ndarray | None = None
    masks: np.ndarray | None = None
    structure_probs: np.ndarray | None = None
    gt_masks: np.ndarray | None = None
    present: np.ndarray | None = None
    structures: tuple[str, ...] = STRUCTURES


@torch.no_grad()
def explain_image(
    model: nn.Module,
    image_tensor: torch.Tensor,
    original_image: np.ndarray,
    *,
    image_id: str,
    image_path: str | None = None,
    region: Sequence[float] = FULL_REGION,
    gt_masks: np.ndarray | None = None,
    present: np.ndarray | None = None,
    label: int | None = None,
    structures: Sequence[str] = STRUCTURES,
    threshold: float = BINARY_THRESHOLD,
    temperature: float = 1.0,
    model_source: str | None = None,
    loss: LossConfig | None = None,
) -> Explanation:
    """Run ``model`` on one normalised image and build its explanation.

    Args:
        model: a gaze network (returns :class:`~dermogaze.models.output.GazeOutput`); it is put in
            eval mode and run on the device of its parameters.
        image_tensor: ``(3, S, S)`` normalised input.
        original_image: ``(H, W, 3)`` uint8, the image in whose pixels gazes are reported.
        image_id: identifier (file stem or ISIC id).
        image_path: source file, recorded in the JSON.
        region: the part of ``original_image`` the input covers (fractions).
        gt_masks: ``(K, S, S)`` GT masks aligned with the input (K structures), or None.
        present: ``(K,)`` bool, or None.
        label: GT diagnosis or None.
        structures: structure names in the model's index order.
        threshold, temperature: the checkpoint's calibration (decision threshold chosen on
            validation; temperature scaling of P(melanoma)).
        model_source: the checkpoint the model was read from, named if its outputs are not finite.
        loss: the checkpoint's loss section (the matching of :func:`explain_record`), or None.

    Returns:
        An :class:`Explanation`.

    Raises:
        DermogazeError: the model's outputs on the image are NaN or infinite.
    """
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    out = model(image_tensor.unsqueeze(0).to(device))  # batch of one
    prob = float(out.calibrated_melanoma_prob(temperature)[0])
    attention = _np(out.attention[0]) if out.attention is not None else None
    masks = _np(out.masks[0]) if out.masks is not None else None
    sprobs = _np(out.structure_logits[0].float().softmax(-1)) if out.structure_logits is not None else None
    outputs = {"melanoma probabilities": [prob], "melanoma log-odds": _np(out.melanoma_margin),
               "attention maps": attention, "structure masks": masks, "structure probabilities": sprobs}
    check_finite_outputs(
        [image_id], {what: v for what, v in outputs.items() if v is not None},  # each the values of one image
        "the model" + (f" in {model_source}" if model_source else ""),
    )
    image = np.ascontiguousarray(original_image, dtype=np.uint8)
    record = explain_record(
        image_id=image_id, melanoma_prob=prob, image_hw=image.shape[:2], attention=attention, masks=masks,
        structure_probs=sprobs, region=region, gt_masks=gt_masks, present=present, label=label,
        image_path=image_path, structures=structures, threshold=threshold, loss=loss,
    )
    return Explanation(
        record=record, image=image, region=tuple(float(v) for v in region), attention=attention, masks=masks,
        structure_probs=sprobs, gt_masks=None if gt_masks is None else np.asarray(gt_masks) > 0,
        present=None if present is None else np.asarray(present, dtype=bool), structures=tuple(structures),
    )


def _known_label(value: float) -> int | None:
    """A cached diagnosis label as an int, ``None`` when unknown (NaN: a structure-only collection)."""
    return None if np.isnan(value) else int(value)


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
        expl: from :func:`explain_image`.
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


def run_explain(
    checkpoint_path: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    data: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    *,
    device: str = "auto",
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
    image_size = int(ckpt["image_size"])
    mean, std = list(ckpt["mean"]), list(ckpt["std"])
    structures = tuple(ckpt["structures"])
    calibration = {k: float(ckpt["calibration"][k]) for k in ("threshold", "temperature")}
    loss = Config.from_dict(ckpt["config"], source=f"{checkpoint_path} config").loss  # its matching
    out = Path(out_dir)
    records: list[dict[str, Any]] = []

    jobs: list[tuple] = []  # (kind, payload)
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
        if kind == "file":
            path, image_id = payload
            tensor, original = load_user_image(path, image_size, mean, std)
            expl = explain_image(
                model, tensor, original, image_id=image_id, image_path=str(path), structures=structures,
                model_source=str(checkpoint_path), loss=loss, **calibration,
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
                structures=structures,
                model_source=str(checkpoint_path), loss=loss, **calibration,
            )
        files = save_explanation(expl, out, stem)
        records.append(expl.record)
        log.debug("explained %s → %s", expl.record["image_id"], ", ".join(str(f) for f in files.values()))
    return records


# ----------------------------------------------------------------------------------------------
# Terminal
# ----------------------------------------------------------------------------------------------


def summary_line(rec: Mapping[str, Any]) -> str:
    """One line for the terminal: id, P(melanoma), ground truth and the gaze path."""
    gazes = " → ".join(
        f"({s['gaze']['x']},{s['gaze']['y']})" + (f" {s['structure']}" if s["structure"] else "")
        for s in rec["steps"]
        if s["gaze"] is not None
    )
    gt = rec.get("ground_truth")
    truth = f" [GT {gt['diagnosis']}]" if gt and gt["diagnosis"] is not None else ""
    line = f"{rec['image_id']}: P(melanoma) {rec['melanoma_probability']:.3f}{truth}"
    return line + (f"  gazes {gazes}" if gazes else "")
