"""Explanations (docs/design.md §7, paper §4.4): the JSON record of one image's sequence of gazes, and the run of a
model on one image that makes it.

The gaze of step ``t`` is the arg-max cell of the attention map ``A_t`` (Eq. 2), mapped to the
image's own pixel coordinates (:func:`dermogaze.metrics.explanation.gaze_points`). With it, each step
reports its predicted structure and mask, and the image its melanoma probability; with ground truth,
the GT structure of each step (docs/design.md §6 pairing: highest soft IoU) and the GT diagnosis.
:mod:`dermogaze.explain.run` writes the records and figures of ``dermogaze explain``.

Geometry (decisions where the paper is silent):

* The network sees an *input region* of the image, written ``(top, left, bottom, right)`` as
  fractions of the image height and width, resized to ``image_size × image_size``.
* A user's own image (any size, any aspect ratio) is resized *whole* to the model size, without a
  crop (:func:`~dermogaze.data.images.load_user_image`): the region is the full image, so every gaze
  maps back inside it. (Training saw the central 224/256 of each image; the whole-image view trades
  that small scale difference for never cutting off a border the user cares about.)
* A prepared split only keeps the cache image (``resize(256) + center-crop(224)`` of the original),
  so its gazes are given in the cache image's pixels; the region is the center crop
  (:func:`cache_region`). The original image size is not stored in the cache.
* Cell ``(i, j)`` of an ``h × w`` attention map covers the fractions ``[i/h, (i+1)/h)`` and
  ``[j/w, (j+1)/w)`` of the region; the gaze is the pixel containing the cell's *center*:
  ``x = floor((left + (j + 0.5) / w · (right - left)) · W)`` (likewise ``y``), clipped to
  ``[0, W-1]``. Coordinates are 0-based integers, ``x`` = column, ``y`` = row, origin top-left.
* Ties in the attention (e.g. the uniform first map of an untrained model, ``V_a = 0``) go to the
  first cell in row-major order (:func:`dermogaze.metrics.explanation.attention_peaks`).
* Mask areas: ``mask_area_fraction`` is the fraction of the network input where ``M_t >= 0.5``;
  ``mask_area_pixels`` is that fraction of the input region's area in image pixels.

A model whose outputs are NaN or infinite (corrupt weights, a diverged run) is refused with one
line naming the checkpoint and the image (:func:`dermogaze.metrics.diagnosis.check_finite_outputs`),
before a record is made of them.

What the model was trained on and how far the image lies from it: the record carries the checkpoint's
``training_data`` (:mod:`dermogaze.data.provenance`), the image's out-of-distribution score ``ood``
(:mod:`dermogaze.metrics.ood`, from the same forward pass: the pooled encoder output ``X'``) and ``notes``, plain
lines for the reader: :data:`~dermogaze.data.provenance.DEMONSTRATION_NOTE` when a model trained on synthetic
images is shown an image that is not synthetic, and :func:`~dermogaze.metrics.ood.ood_note` when the image is
out of distribution.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import LossConfig
from ..data.provenance import demonstration_note
from ..data.transforms import center_crop_box
from ..errors import DermogazeError
from ..evaluation.plots import FULL_REGION
from ..files import to_jsonable
from ..losses import area_fraction, pairwise_soft_iou_loss
from ..metrics.diagnosis import BINARY_THRESHOLD, check_finite_outputs
from ..metrics.explanation import gaze_points, hungarian_steps, pointing_and_relevance
from ..metrics.ood import FeatureDistribution, ood_note, pooled_features
from ..metrics.structures import pair_with_ground_truth
from ..runtime import Autocast, to_numpy
from ..structures import STRUCTURES

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


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------


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
    training_data: Mapping[str, Any] | None = None,
    ood: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The JSON record of one image (docs/design.md §7).

    Keys: ``image_id``, ``image_path``, ``image_size`` ``{width, height}``, ``input_region``
    ``{x0, y0, x1, y1}`` (image pixels, edges), ``melanoma_probability``, ``prediction``
    (``"melanoma"`` when the probability is ``>= threshold``, else ``"benign"``), ``threshold``,
    ``ground_truth`` (``None``, or ``{diagnosis, label, prediction_correct, structures_present}``; the first
    three ``None`` when only the structures are known),
    ``n_steps`` and ``steps``: one dict per step with ``step`` (1-based), ``gaze`` ``{x, y}``,
    ``attention`` (value of ``A_t`` at the gaze), ``attention_vs_uniform`` (that value times
    ``h·w``: 1 = no preference), ``structure`` and ``structure_probability`` (arg-max of
    ``softmax(pred_t)``), ``structure_probabilities`` (one per structure), ``mask_area_fraction``,
    ``mask_area_pixels``, ``gt_structure`` and ``structure_correct``, and the docs/design.md §6b measures
    (:mod:`dermogaze.metrics.explanation`): ``matched_structure`` (the loss's Hungarian matching, ``loss``'s,
    which may differ from ``gt_structure``'s highest-IoU pairing), ``pointing_hit`` (the attention peak lies on
    that structure, one cell of tolerance) and ``relevance_mass`` (``Σ A_t·m_s``). Values a variant
    cannot produce (no attention, no decoder, no ground truth, an unmatched step) are ``None``. Then
    ``training_data`` (the checkpoint's, :mod:`dermogaze.data.provenance`; None when not given), ``ood``
    (``{distance, threshold, out_of_distribution}``, :mod:`dermogaze.metrics.ood`; None without a fitted score)
    and ``notes`` (plain lines, the module docstring says which).

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
        training_data: the checkpoint's ``training_data``, or None.
        ood: the image's out-of-distribution score (:meth:`FeatureDistribution.score`), or None.
        notes: lines for the reader.

    Returns:
        A dict of JSON types only.
    """
    att, masks, sprobs, gt = to_numpy(attention), to_numpy(masks), to_numpy(structure_probs), to_numpy(gt_masks)
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
        "training_data": None if training_data is None else dict(training_data),
        "ood": None if ood is None else dict(ood),
        "notes": [str(n) for n in notes],
    }
    return to_jsonable(record)


def _step_pointing(
    att: np.ndarray, masks: np.ndarray, gt: np.ndarray, present: np.ndarray, loss: LossConfig | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each step's matched structure (the loss's Hungarian matching, -1 = none), pointing hit and relevance mass.

    The docs/design.md §6b measures of :mod:`dermogaze.metrics.explanation` for one image: ``(T,)`` arrays.
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
    autocast: Autocast = contextlib.nullcontext,
    training_data: Mapping[str, Any] | None = None,
    ood: FeatureDistribution | None = None,
    image_kind: str | None = None,
) -> Explanation:
    """Run ``model`` on one normalised image and build its explanation.

    Args:
        model: a gaze network: its ``forward_with_state`` returns the
            :class:`~dermogaze.models.output.GazeOutput` and the :class:`~dermogaze.models.GazeState` (whose
            encoder output ``X'`` gives the out-of-distribution features); it is put in eval mode and run on the
            device of its parameters.
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
        autocast: the precision of the forward pass (:func:`dermogaze.runtime.autocast_factory`); the record
            is made from its outputs cast to float32.
        training_data: the checkpoint's ``training_data`` (recorded, and whether the demonstration note applies).
        ood: the checkpoint's feature distribution, or None (no score).
        image_kind: the kind of collection the image comes from (``"synthetic"``, ``"real"``, ``"unknown"``: its
            cache's, :func:`~dermogaze.data.provenance.collection_kind`), or None for a user's image file.

    Returns:
        An :class:`Explanation`.

    Raises:
        DermogazeError: the model's outputs on the image are NaN or infinite.
    """
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with autocast():
        out, state = model.forward_with_state(image_tensor.unsqueeze(0).to(device))  # batch of one
    out = out.float()
    prob = float(out.calibrated_melanoma_prob(temperature)[0])
    attention = to_numpy(out.attention[0]) if out.attention is not None else None
    masks = to_numpy(out.masks[0]) if out.masks is not None else None
    sprobs = to_numpy(out.structure_logits[0].float().softmax(-1)) if out.structure_logits is not None else None
    outputs = {"melanoma probabilities": [prob], "melanoma log-odds": to_numpy(out.melanoma_margin),
               "attention maps": attention, "structure masks": masks, "structure probabilities": sprobs}
    check_finite_outputs(
        [image_id], {what: v for what, v in outputs.items() if v is not None},  # each the values of one image
        "the model" + (f" in {model_source}" if model_source else ""),
    )
    image = np.ascontiguousarray(original_image, dtype=np.uint8)
    score = ood.score(pooled_features(state.x_prime))[0] if ood is not None else None  # X' (1, C, h, w)
    notes = [demonstration_note(training_data, image_kind), ood_note(score, ood.quantile) if ood else None]
    notes = [n for n in notes if n]
    record = explain_record(
        image_id=image_id, melanoma_prob=prob, image_hw=image.shape[:2], attention=attention, masks=masks,
        structure_probs=sprobs, region=region, gt_masks=gt_masks, present=present, label=label,
        image_path=image_path, structures=structures, threshold=threshold, loss=loss, training_data=training_data,
        ood=score, notes=notes,
    )
    return Explanation(
        record=record, image=image, region=tuple(float(v) for v in region), attention=attention, masks=masks,
        structure_probs=sprobs, gt_masks=None if gt_masks is None else np.asarray(gt_masks) > 0,
        present=None if present is None else np.asarray(present, dtype=bool), structures=tuple(structures),
    )
