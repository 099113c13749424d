"""How good are the explanations? The measures of docs/design.md §6b (beyond the paper).

The paper judged its gazes by eye (Figs. 7-8). These measures make it a number, per structure and
overall, for the variants with an attentive ConvLSTM. Notation: ``A_t`` the attention map of step
``t`` (``h × w``, sums to 1, Eq. 2), whose peak cell is the step's *gaze* (:func:`attention_peaks`; in
image pixels, :func:`gaze_points`); ``m_s`` the ground-truth mask of structure ``s`` reduced to the
attention grid by **area fraction** (:func:`dermogaze.losses.area_fraction`: cell = the fraction of
its pixels inside the mask; ``avg_pool2d`` with a cell-sized kernel, as the attention grid divides
the image by 8)::

    measure                  definition                                         reference
    pointing game            hit ⇔ m_s[argmax A_t] > 0                          Zhang et al., IJCV 2018
      matched                s = the step's structure in the loss's Hungarian matching (losses.matching_cost:
                             masks only, or with the gazes / the classifier for a model trained with
                             loss.attention_matching / loss.class_matching); "masks_matched" = the
                             paper's (masks only)
      named                  s = argmax of the step's structure classifier; s absent = a miss,
                             counted in the hallucination rate
      centroid (reference)   no model: the cell of the centroid of the whole lesion (every
                             structure but the skin), for each structure present; Zhang et al.'s
                             "center" baseline, centred on the lesion instead of the image
    relevance mass           Σ A_t · m_s  (matched s)                           Arras et al., 2022
    relevance lift           Σ A_t · m_s / mean(m_s)   (uniform attention = 1)
    gaze ablation            |P(melanoma | all gazes) − P(melanoma | gaze t removed)|, and the
                             fraction of decisions that flip at the checkpoint's threshold
                             (GazeNet.diagnose defines "removed")
    deletion / insertion     P(predicted class) while the pixels, most attended first (Σ_t A_t
                             upsampled), are replaced by a blurred image / restored from it, in 20
                             steps; area under the curve, and the same for a random order
                                                                                Petsiuk et al., RISE 2018
    stability                the gazes of the 8 flips/rotations, mapped back: MultiMatch position and
                             shape similarity and the spread of P(melanoma) (dermogaze.metrics.scanpath)

Decisions where the papers are silent:

* **Matching.** The *matched* structure of a step is the one its model's own loss pairs it with in
  training (the checkpoint's ``loss`` section): the paper's masks-only matching, or, for a model
  trained with ``loss.attention_matching``, the matching that weighs the gazes too, with the full λ
  (with ``loss.class_matching``, the structure classifier too). Such a model decodes nearly the same
  mask at steps that look at different structures (the whole lesion for lesion and pigment network),
  so the masks alone would pair them by chance; its figures under the paper's matching are reported
  too (``pointing_masks_matched``).
* **Tolerance.** The pointing game's hit needs ``m_s > 0`` in the peak *cell*: a structure touching
  a cell by one pixel counts, a tolerance of one attention cell (8 image pixels at the paper's
  scale). A mask smaller than one cell is therefore still hit when the peak is on its cell.
* **Absent structures** (empty masks) are excluded from that structure's figures and counted
  (``excluded``: the images where ``s`` is absent); the named pointing game is the exception, where
  a step naming an absent structure is a miss (and a hallucination). A present structure left out of
  the matching (more present structures than steps) gets no matched figure.
* **Overall** = the mean over all (step, structure) pairs that enter a figure (so frequent
  structures weigh more); ``per_structure`` gives each its own mean, ``None`` when no pair.
* **Flip**: the calibrated probability (the checkpoint's temperature) crosses the checkpoint's
  decision threshold (chosen on validation), one (image, removed step) pair at a time.
* **Deletion/insertion**: the saliency is ``Σ_t A_t`` upsampled bilinearly to the input (so pixels
  of a cell are ordered by their neighbours, not arbitrarily); ties keep row-major order. Step
  ``k`` of ``K`` (= 20) has ``round(k·H·W/K)`` pixels changed; the curve has ``K + 1`` points
  (``k = 0`` is the unperturbed image for deletion, the blurred one for insertion) and its area is
  the trapezoid over ``[0, 1]``. The blurred image is ``torchvision`` ``gaussian_blur`` of the
  normalised input (blurring commutes with the per-channel normalisation) with σ = 5·H/224 and a
  kernel of ``2·ceil(2σ) + 1`` pixels (RISE's σ = 5 at 224 px). The predicted class is the
  decision at the checkpoint's threshold on the unperturbed image; P is calibrated. The random
  order is drawn per image from one generator seeded with ``seed`` (the same images get the same
  orders whatever the batch size). The perturbed forwards of a batch run in chunks.
* **Cost**: deletion, insertion and stability run on the first ``faithfulness`` images of the split
  (all by default); the other measures on every image.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from ..config import LossConfig
from ..losses import (
    area_fraction,
    match_batch,
    matches_on_masks_only,
    matching_cost,
    pairwise_cross_entropy,
    pairwise_soft_iou_loss,
)
from ..models import GazeNet, GazeOutput, GazeState
from ..runtime import Autocast, to_numpy

logger = logging.getLogger(__name__)

#: Deletion/insertion steps (RISE).
DELETION_STEPS = 20
#: RISE's blur σ at 224 px; scaled with the input size.
BLUR_SIGMA_224 = 5.0


# ----------------------------------------------------------------------------------------------
# Pointing game and relevance mass
# ----------------------------------------------------------------------------------------------


def attention_peaks(attention: Tensor) -> Tensor:
    """The cell of highest attention of every map, as a flat index ``i·w + j`` (the first maximum in row-major order).

    Shape:
        ``(..., h, w)`` (e.g. ``(B, T, h, w)``) → ``(...)``.
    """
    return attention.flatten(-2).argmax(-1)  # (..., h*w) -> (...)


def gaze_points(
    attention: Tensor | np.ndarray, image_hw: tuple[int, int], region: Sequence[float] | None = None
) -> list[tuple[int, int]]:
    """The gaze of each step: the peak cell of ``A_t`` (:func:`attention_peaks`) in image pixels (paper §4.4, Fig. 7).

    Cell ``(i, j)`` of an ``h × w`` map covers the fractions ``[i/h, (i+1)/h)`` and ``[j/w, (j+1)/w)`` of the
    region; the gaze is the pixel holding the cell's centre, ``x = floor((left + (j + 0.5) / w · (right - left)) · W)``
    (likewise ``y``), clipped to ``[0, W-1]`` (:mod:`dermogaze.explain.record` states the geometry).

    Args:
        attention: ``(T, h, w)`` attention maps (a tensor or array).
        image_hw: ``(H, W)`` of the image whose pixel coordinates are returned.
        region: the part of that image the network saw, ``(top, left, bottom, right)`` fractions
            (default: the whole image).

    Returns:
        T tuples ``(x, y)``: 0-based pixel column and row of each gaze, inside the image.
    """
    att = torch.from_numpy(np.ascontiguousarray(to_numpy(attention)))
    if att.ndim != 3:
        raise ValueError(f"attention must be (T, h, w), got shape {tuple(att.shape)}")
    _, h, w = att.shape
    height, width = int(image_hw[0]), int(image_hw[1])
    top, left, bottom, right = (0.0, 0.0, 1.0, 1.0) if region is None else (float(v) for v in region)
    points = []
    for cell in attention_peaks(att).tolist():  # (T,) flat cell index
        i, j = divmod(cell, w)
        fy = top + (i + 0.5) / h * (bottom - top)
        fx = left + (j + 0.5) / w * (right - left)
        x = min(max(math.floor(fx * width), 0), width - 1)
        y = min(max(math.floor(fy * height), 0), height - 1)
        points.append((x, y))
    return points


def pointing_and_relevance(attention: Tensor, grid_masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pointing-game hits, relevance mass and lift of every step against every structure.

    Args:
        attention: ``A_t`` ``(B, T, h, w)``, each map summing to 1.
        grid_masks: ``m_s`` on the attention grid ``(B, S, h, w)`` (:func:`dermogaze.losses.area_fraction`).

    Returns:
        ``hit`` bool ``(B, T, S)`` (``m_s`` at the peak of ``A_t`` is > 0), ``relevance`` ``(B, T, S)``
        (``Σ A_t·m_s``) and ``lift`` ``(B, T, S)`` (relevance / mean(``m_s``); NaN for an empty mask).
    """
    a = attention.float()
    m = grid_masks.float()
    peaks = attention_peaks(a)  # (B, T)
    at_peak = torch.gather(m.flatten(-2), 2, peaks.unsqueeze(1).expand(-1, m.shape[1], -1))  # (B, S, T)
    hit = at_peak.transpose(1, 2) > 0  # (B, T, S)
    relevance = torch.einsum("bthw,bshw->bts", a, m)  # (B, T, S)
    mean = m.mean(dim=(-2, -1))  # (B, S)
    lift = relevance / mean.unsqueeze(1).where(mean.unsqueeze(1) > 0, torch.nan)
    return hit, relevance, lift


def centroid_cells(masks: Tensor, size: tuple[int, int], skin: int | None = 1) -> Tensor:
    """The attention-grid cell of the centroid of the whole lesion of each image, a flat index ``i·w + j`` ``(B,)``.

    Args:
        masks: GT masks ``(B, S, H, W)``.
        size: the attention grid ``(h, w)``.
        skin: the index of the skin, left out of the whole lesion (the union of the other masks);
            ``None``: the union of every mask.

    An image without lesion pixels gets the image centre's cell. A pixel ``(y, x)`` lies in cell
    ``(floor(y·h/H), floor(x·w/W))``.
    """
    b, s, big_h, big_w = masks.shape
    keep = [k for k in range(s) if k != skin]
    whole = masks[:, keep].float().amax(dim=1) if keep else masks.new_zeros(b, big_h, big_w).float()  # (B, H, W)
    area = whole.sum(dim=(1, 2))
    ys = torch.arange(big_h, dtype=torch.float32, device=masks.device) + 0.5  # pixel centres
    xs = torch.arange(big_w, dtype=torch.float32, device=masks.device) + 0.5
    cy = torch.where(area > 0, (whole.sum(2) * ys).sum(1) / area.clamp_min(1), torch.full_like(area, big_h / 2))
    cx = torch.where(area > 0, (whole.sum(1) * xs).sum(1) / area.clamp_min(1), torch.full_like(area, big_w / 2))
    h, w = size
    i = (cy * h / big_h).floor().long().clamp(0, h - 1)
    j = (cx * w / big_w).floor().long().clamp(0, w - 1)
    return i * w + j


def centroid_hits(grid_masks: Tensor, cells: Tensor) -> Tensor:
    """``(B, S)`` bool: structure ``s`` covers part of the cell ``cells[b]`` (``m_s > 0`` there).

    Args:
        grid_masks: ``m_s`` on the attention grid ``(B, S, h, w)``.
        cells: flat cell indices ``(B,)`` (:func:`centroid_cells`).
    """
    flat = grid_masks.flatten(-2)  # (B, S, h*w)
    return torch.gather(flat, 2, cells.view(-1, 1, 1).expand(-1, flat.shape[1], 1)).squeeze(-1) > 0


def hungarian_steps(
    cost: Tensor,
    present: Tensor,
    relevance: Tensor | None = None,
    loss: LossConfig | None = None,
    classes: Tensor | None = None,
) -> Tensor:
    """The structure matched to each step by the loss's Hungarian matching, ``-1`` where unmatched ``(B, T)``.

    Args:
        cost: the soft IoU losses of the predicted masks against the GT masks ``(B, S, T)``
            (:func:`dermogaze.losses.pairwise_soft_iou_loss`); present: ``(B, S)`` bool.
        relevance: ``Σ A_t·m_s`` ``(B, T, S)`` (:func:`pointing_and_relevance`), for a matching that weighs the gazes.
        loss: the model's loss section (its checkpoint's): with ``attention_matching`` and λ > 0 the
            matching minimises ``βγ·(1 − soft IoU) + λ·(1 − Σ A_t·m_s)`` as in training
            (:func:`dermogaze.losses.matching_cost`); ``None``: the paper's matching, masks only.
        classes: ``−log softmax(pred_t)[s]`` ``(B, S, T)`` (:func:`dermogaze.losses.pairwise_cross_entropy`), for
            a matching that weighs the classifier (``loss.class_matching``).
    """
    outside = None if relevance is None else 1.0 - relevance.float().transpose(1, 2).to(cost.device)  # (B, S, T)
    matched = torch.full((cost.shape[0], cost.shape[2]), -1, dtype=torch.long)
    classes = None if classes is None else classes.to(cost.device)
    for b, (steps, structures) in enumerate(match_batch(matching_cost(cost, outside, loss, classes=classes), present)):
        matched[b, torch.from_numpy(steps)] = torch.from_numpy(structures)
    return matched


# ----------------------------------------------------------------------------------------------
# Deletion and insertion (RISE)
# ----------------------------------------------------------------------------------------------


def blur_baseline(images: Tensor) -> Tensor:
    """The blurred images that deleted pixels take (RISE): Gaussian, σ = 5·H/224, kernel ``2·ceil(2σ)+1``."""
    sigma = BLUR_SIGMA_224 * images.shape[-2] / 224
    kernel = 2 * math.ceil(2 * sigma) + 1
    return gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def saliency_order(attention: Tensor, size: tuple[int, int]) -> Tensor:
    """Pixels from most to least attended: ``Σ_t A_t`` upsampled bilinearly to ``size`` ``(B, H·W)``."""
    total = attention.float().sum(dim=1, keepdim=True)  # Σ_t A_t (B, 1, h, w)
    up = F.interpolate(total, size=size, mode="bilinear", align_corners=False).flatten(1)  # (B, H*W)
    return torch.argsort(up, dim=1, descending=True, stable=True)


def perturbation_curves(
    prob: Callable[[Tensor], Tensor],
    images: Tensor,
    baseline: Tensor,
    order: Tensor,
    target: Tensor,
    *,
    steps: int = DELETION_STEPS,
    chunk: int = 256,
) -> tuple[Tensor, Tensor]:
    """Deletion and insertion curves (RISE) of a batch for one pixel order.

    Args:
        prob: P(melanoma) of a batch of images ``(N, 3, H, W)`` → ``(N,)``.
        images: ``(B, 3, H, W)``; baseline: the same images blurred (:func:`blur_baseline`).
        order: ``(B, H·W)`` pixel indices, first = changed first.
        target: ``(B,)`` the class whose probability is followed (1 = melanoma, 0 = benign).
        steps: ``K``; the curves have ``K + 1`` points.
        chunk: images per forward pass.

    Returns:
        ``deletion`` and ``insertion``, each ``(B, K + 1)``: P(target) after ``round(k·H·W/K)``
        pixels were replaced by the baseline (deletion) or restored from it (insertion).
    """
    b, c, h, w = images.shape
    n = h * w
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=order.device).expand(b, -1))  # position of each pixel
    counts = torch.tensor([round(k * n / steps) for k in range(steps + 1)], device=order.device)  # (K+1,)
    changed = (rank.unsqueeze(0) < counts.view(-1, 1, 1)).view(steps + 1, b, 1, h, w)  # (K+1, B, 1, H, W)
    deleted = torch.where(changed, baseline.unsqueeze(0), images.unsqueeze(0))  # (K+1, B, 3, H, W)
    inserted = torch.where(changed, images.unsqueeze(0), baseline.unsqueeze(0))
    batch = torch.cat([deleted, inserted]).view(-1, c, h, w)  # (2(K+1)B, 3, H, W)
    p = torch.cat([prob(part) for part in batch.split(chunk)]).view(2, steps + 1, b)  # P(melanoma)
    p = torch.where(target.bool().view(1, 1, b), p, 1.0 - p)  # P(target)
    return p[0].T, p[1].T  # (B, K+1) each


def curve_area(curves: np.ndarray) -> np.ndarray:
    """Trapezoid area under curves of ``K + 1`` evenly spaced points of ``[0, 1]``: ``(..., K+1)`` → ``(...)``."""
    k = curves.shape[-1] - 1
    return np.trapezoid(curves, dx=1.0 / k, axis=-1)


# ----------------------------------------------------------------------------------------------
# The accumulator evaluate feeds
# ----------------------------------------------------------------------------------------------


def _mean(values: Sequence[float] | np.ndarray) -> float | None:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()) if v.size else None


class ExplanationAccumulator:
    """Collects the docs/design.md §6b measures batch by batch (``dermogaze evaluate`` feeds one) and summarises them.

    Per image it keeps a few numbers per step, so memory does not grow with the image size, and it
    pickles (:meth:`merge` combines the accumulators of several processes).

    Args:
        structures: structure names in index order (the checkpoint's ``structures``).
        threshold, temperature: the checkpoint's calibration (flips are counted at ``threshold`` on
            the temperature-scaled probability).
        faithfulness: how many images (the first of the split) get deletion, insertion and
            stability; ``None`` = all.
        steps: deletion/insertion steps (20).
        seed: of the random pixel orders.
        chunk: images per forward pass of the perturbed images.
        stability: ``view_stability(model, images, temperature=...)`` → per-image ``position``, ``shape``,
            ``p_spread`` arrays and possibly a ``reason`` text (:func:`dermogaze.metrics.scanpath.view_stability`),
            or ``None`` to skip it.
        loss: the model's loss section (its checkpoint's), whose Hungarian matching gives the *matched*
            structure of each step (:func:`hungarian_steps`); ``None``: the paper's (masks only).
    """

    def __init__(
        self,
        structures: Sequence[str],
        *,
        threshold: float = 0.5,
        temperature: float = 1.0,
        faithfulness: int | None = None,
        steps: int = DELETION_STEPS,
        seed: int = 0,
        chunk: int = 256,
        stability: Callable[..., Mapping[str, np.ndarray]] | None = None,
        loss: LossConfig | None = None,
    ) -> None:
        self.structures = tuple(structures)
        self.loss = loss
        self.threshold = float(threshold)
        self.temperature = float(temperature)
        self.faithfulness = faithfulness
        self.steps = steps
        self.chunk = chunk
        self.stability_fn = stability
        self._generator = torch.Generator().manual_seed(seed)
        s = len(self.structures)
        self.n_images = 0
        self.present = np.zeros(s, dtype=np.int64)  # images where each structure is present
        self.centroid_hits = np.zeros(s, dtype=np.int64)  # ... and where the lesion's centroid cell touches it
        # one row per (image, matched step): structure, hit, relevance, lift
        self.matched: list[np.ndarray] = []
        # one row per (image, step matched by the masks alone): structure, hit
        self.masks_matched: list[np.ndarray] = []
        # one row per (image, step): named structure, present, hit
        self.named: list[np.ndarray] = []
        self.ablation_delta: list[np.ndarray] = []  # (B, T) |ΔP|
        self.ablation_flip: list[np.ndarray] = []  # (B, T) bool
        self.deletion: list[np.ndarray] = []  # (B, K+1) per order kind
        self.insertion: list[np.ndarray] = []
        self.random_deletion: list[np.ndarray] = []
        self.random_insertion: list[np.ndarray] = []
        self.stability: dict[str, list[np.ndarray]] = {}
        self.stability_note: str | None = None
        self.faithful_images = 0
        self.seconds = {"pointing_relevance_ablation": 0.0, "deletion_insertion": 0.0, "stability": 0.0}

    def _want_faithful(self, batch_size: int) -> int:
        left = batch_size if self.faithfulness is None else max(self.faithfulness - self.faithful_images, 0)
        return min(batch_size, left)

    @torch.no_grad()
    def update(
        self,
        model: GazeNet,
        images: Tensor,
        out: GazeOutput,
        state: GazeState,
        masks: Tensor | None = None,
        present: Tensor | None = None,
        autocast: Autocast = contextlib.nullcontext,
    ) -> None:
        """Add one batch.

        Args:
            model: the network that produced ``out`` and ``state`` (in eval mode).
            images: the normalised batch ``(B, 3, H, W)`` it ran on.
            out, state: :meth:`GazeNet.forward_with_state` of ``images`` (``out`` in float32).
            masks: GT masks ``(B, S, H, W)``, or ``None`` (no structure ground truth).
            present: ``(B, S)`` bool (derived from ``masks`` when ``None``).
            autocast: the context of ``out``'s forward pass, for the diagnoses the measures recompute (gaze
                ablation on ``state``, perturbed images, views); their results are read in float32.
        """
        if out.attention is None:  # no gazes: nothing to measure, the ablation effect is zero by construction
            self.n_images += images.shape[0]
            return
        tic = time.perf_counter()
        b = images.shape[0]
        self.n_images += b
        attention = out.attention.float()  # (B, T, h, w)
        if masks is not None and out.masks is not None:
            masks = masks.float()
            present = masks.flatten(2).amax(-1) > 0 if present is None else present.bool()
            if masks.shape[1] != len(self.structures):
                raise ValueError(f"{masks.shape[1]} GT masks for {len(self.structures)} structures")
            self.present += present.sum(0).cpu().numpy()
            grid = area_fraction(masks, tuple(attention.shape[-2:]))  # (B, S, h, w)
            hit, relevance, lift = (x.cpu() for x in pointing_and_relevance(attention, grid))
            skin = self.structures.index("skin") if "skin" in self.structures else None
            centroid = centroid_hits(grid, centroid_cells(masks, tuple(grid.shape[-2:]), skin)) & present
            self.centroid_hits += centroid.sum(0).cpu().numpy()
            cost = pairwise_soft_iou_loss(out.masks.float(), masks)  # (B, S, T)
            names = self.loss is not None and self.loss.class_matching  # the classifier weighs in the matching
            classes = pairwise_cross_entropy(out.structure_logits) if names else None  # (B, S, T)
            matched = hungarian_steps(cost, present, relevance, self.loss, classes)  # (B, T)
            bi, ti = torch.nonzero(matched >= 0, as_tuple=True)
            si = matched[bi, ti]
            self.matched.append(np.stack([
                si.numpy(), hit[bi, ti, si].numpy(), relevance[bi, ti, si].numpy(), lift[bi, ti, si].numpy(),
            ], axis=1).astype(np.float64))  # (N, 4)
            if not matches_on_masks_only(self.loss):
                matched = hungarian_steps(cost, present)  # the paper's matching
                bi, ti = torch.nonzero(matched >= 0, as_tuple=True)
                si = matched[bi, ti]
            self.masks_matched.append(np.stack([si.numpy(), hit[bi, ti, si].numpy()], axis=1).astype(np.float64))
            named = out.structure_logits.float().argmax(-1).cpu()  # (B, T)
            pres = present.cpu()
            named_present = torch.gather(pres, 1, named)  # (B, T)
            named_hit = torch.gather(hit, 2, named.unsqueeze(-1)).squeeze(-1) & named_present
            self.named.append(np.stack([named.flatten().numpy(), named_present.flatten().numpy(),
                                        named_hit.flatten().numpy()], axis=1).astype(np.int64))  # (B*T, 3)
        self._ablation(model, state, autocast)
        self.seconds["pointing_relevance_ablation"] += time.perf_counter() - tic

        k = self._want_faithful(b)
        if k == 0:
            return
        tic = time.perf_counter()
        self._deletion_insertion(model, images[:k], attention[:k], out.calibrated_melanoma_prob(self.temperature)[:k],
                                 autocast)
        self.seconds["deletion_insertion"] += time.perf_counter() - tic
        if self.stability_fn is not None:
            tic = time.perf_counter()
            with autocast():
                views = self.stability_fn(model, images[:k], temperature=self.temperature)
            for key, values in views.items():
                values = np.asarray(values)
                if values.dtype.kind == "f":
                    self.stability.setdefault(key, []).append(values.astype(np.float64))
                else:  # why a part cannot be measured (a model with too few gazes)
                    self.stability_note = str(values)
            self.seconds["stability"] += time.perf_counter() - tic
        self.faithful_images += k

    def _ablation(self, model: GazeNet, state: GazeState, autocast: Autocast) -> None:
        """|ΔP(melanoma)| and flips for every step removed alone (:meth:`GazeNet.diagnose`)."""
        with autocast():  # the state is in the forward pass's precision
            full = model.diagnose(state, temperature=self.temperature).float()  # (B,)
        steps = model.steps
        deltas, flips = [], []
        for t in range(steps):
            keep = torch.arange(steps, device=full.device) != t
            with autocast():
                p = model.diagnose(state, keep, temperature=self.temperature).float()
            deltas.append((p - full).abs())
            flips.append((p >= self.threshold) != (full >= self.threshold))
        self.ablation_delta.append(torch.stack(deltas, 1).cpu().numpy())  # (B, T)
        self.ablation_flip.append(torch.stack(flips, 1).cpu().numpy())

    def _deletion_insertion(
        self, model: GazeNet, images: Tensor, attention: Tensor, prob: Tensor, autocast: Autocast
    ) -> None:
        def p_melanoma(x: Tensor) -> Tensor:
            with autocast():
                out = model.forward_with_state(x, decode=False)[0]  # the diagnosis needs no structure decoder
            return out.float().calibrated_melanoma_prob(self.temperature)

        b, _, h, w = images.shape
        baseline = blur_baseline(images)
        target = prob >= self.threshold  # the predicted class on the unperturbed image
        order = saliency_order(attention, (h, w))
        random_order = torch.stack([torch.randperm(h * w, generator=self._generator) for _ in range(b)])
        for o, dele, ins in ((order, self.deletion, self.insertion),
                             (random_order.to(images.device), self.random_deletion, self.random_insertion)):
            d, i = perturbation_curves(p_melanoma, images, baseline, o, target, steps=self.steps, chunk=self.chunk)
            dele.append(d.cpu().numpy())
            ins.append(i.cpu().numpy())

    def merge(self, others: Sequence[ExplanationAccumulator]) -> ExplanationAccumulator:
        """This accumulator with the rows of ``others`` appended (in place; returns ``self``)."""
        for o in others:
            self.n_images += o.n_images
            self.present += o.present
            self.centroid_hits += o.centroid_hits
            self.faithful_images += o.faithful_images
            for name in ("matched", "masks_matched", "named", "ablation_delta", "ablation_flip", "deletion",
                         "insertion", "random_deletion", "random_insertion"):
                getattr(self, name).extend(getattr(o, name))
            for key, values in o.stability.items():
                self.stability.setdefault(key, []).extend(values)
            self.stability_note = self.stability_note or o.stability_note
            for key, s in o.seconds.items():
                self.seconds[key] += s
        return self

    def _by_structure(self, structure: np.ndarray, values: np.ndarray) -> dict[str, Any]:
        return {
            "overall": _mean(values),
            "per_structure": {n: _mean(values[structure == k]) for k, n in enumerate(self.structures)},
            "excluded": {n: int(self.n_images - self.present[k]) for k, n in enumerate(self.structures)},
        }

    def compute(self) -> dict[str, Any]:
        """The ``explanation`` section of ``metrics.json`` (see the module docstring for each measure).

        Keys: ``pointing_matched`` (the loss's matching), ``pointing_masks_matched`` (the paper's
        matching, masks only: the same figures unless the model was trained with
        ``loss.attention_matching``), ``pointing_named``, ``hallucination_rate``, ``relevance_mass``,
        ``relevance_lift``, ``pointing_centroid`` (the no-model reference, over every image where the
        structure is present) (each ``{"overall", "per_structure": {name: value}, "excluded": {name: images}}``;
        ``None`` without structure ground truth or decoder), ``present_images``, ``ablation``
        (``mean_abs_delta_per_step``, ``flip_fraction``, ``flip_fraction_per_step``, ``zero_by_construction``),
        ``deletion`` and ``insertion`` (``auc``, ``random_auc``, ``curve``, ``random_curve``), ``stability``
        (``position``, ``shape``, ``p_spread``: means of the per-image values, NaN left out; ``note``: why a
        part could not be measured; or ``None``), ``n_images``, ``faithfulness_images`` and ``seconds``.
        """
        res: dict[str, Any] = {"n_images": self.n_images, "faithfulness_images": self.faithful_images}
        empty = dict.fromkeys(("pointing_matched", "pointing_masks_matched", "pointing_named", "hallucination_rate",
                               "relevance_mass", "relevance_lift", "pointing_centroid"))
        res.update(empty)
        res["present_images"] = {n: int(c) for n, c in zip(self.structures, self.present, strict=True)}
        if self.matched:
            m = np.concatenate(self.matched)  # (N, 4): structure, hit, relevance, lift
            s = m[:, 0].astype(np.int64)
            res["pointing_matched"] = self._by_structure(s, m[:, 1])
            mm = np.concatenate(self.masks_matched)  # (N', 2): structure, hit
            res["pointing_masks_matched"] = self._by_structure(mm[:, 0].astype(np.int64), mm[:, 1])
            res["relevance_mass"] = self._by_structure(s, m[:, 2])
            res["relevance_lift"] = self._by_structure(s, m[:, 3])
            named = np.concatenate(self.named)  # (B*T, 3): named structure, present, hit
            res["pointing_named"] = self._by_structure(named[:, 0], named[:, 2].astype(np.float64))
            res["hallucination_rate"] = self._by_structure(named[:, 0], 1.0 - named[:, 1])
            res["pointing_centroid"] = {
                "overall": float(self.centroid_hits.sum() / self.present.sum()) if self.present.sum() else None,
                "per_structure": {n: float(h / p) if p else None
                                  for n, h, p in zip(self.structures, self.centroid_hits, self.present, strict=True)},
                "excluded": {n: int(self.n_images - p) for n, p in zip(self.structures, self.present, strict=True)},
            }
        if self.ablation_delta:
            delta, flip = np.concatenate(self.ablation_delta), np.concatenate(self.ablation_flip)  # (N, T)
            res["ablation"] = {
                "mean_abs_delta_per_step": delta.mean(0).tolist(),
                "flip_fraction": float(flip.mean()),
                "flip_fraction_per_step": flip.mean(0).tolist(),
                "threshold": self.threshold,
                "zero_by_construction": False,
            }
        else:
            res["ablation"] = {"mean_abs_delta_per_step": [], "flip_fraction": 0.0, "flip_fraction_per_step": [],
                               "threshold": self.threshold, "zero_by_construction": True}
        for kind, curves, rand in (("deletion", self.deletion, self.random_deletion),
                                   ("insertion", self.insertion, self.random_insertion)):
            if curves:
                c, r = np.concatenate(curves), np.concatenate(rand)  # (N, K+1)
                res[kind] = {"auc": float(curve_area(c).mean()), "random_auc": float(curve_area(r).mean()),
                             "curve": c.mean(0).tolist(), "random_curve": r.mean(0).tolist(), "steps": self.steps}
            else:
                res[kind] = None
        res["stability"] = None
        if self.stability:
            values = {k: np.concatenate(v) for k, v in self.stability.items()}
            res["stability"] = {k: _mean(v[~np.isnan(v)]) for k, v in values.items()}
            res["stability"]["note"] = self.stability_note
        res["seconds"] = {**self.seconds, "total": sum(self.seconds.values())}
        return res
