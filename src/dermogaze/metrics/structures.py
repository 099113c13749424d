"""Structure metrics of docs/design.md §6 (paper §4.1): mAP@IoU (Eq. 20), pairing and confusion matrix (Fig. 6),
per-structure Jaccard, ISIC 2017 Task 2 superpixel AUC and ISIC 2018 Task 2 Jaccard.

Everything here works on the numpy arrays of one image (the superpixel AUC and the Task 2 Jaccard on
values gathered over a split), so the definitions can be read and tested without a model;
:class:`~dermogaze.metrics.accumulator.EvaluationAccumulator` feeds them a split. Conventions shared
by every function:

* Structures are indexed in the order of the data's structure set (``info["structures"]``, a
  checkpoint's ``structures``): for ISIC 2017 lesion, skin, pigment network, negative network,
  milia-like cysts, streaks; for ISIC 2018 the five Task 2 attributes follow lesion and skin.
* A ground-truth (GT) structure is *present* in an image when its mask has at least one pixel
  (docs/design.md §1); metrics only ever compare predictions with present structures.
* A predicted mask ``M_t`` (probabilities in [0, 1]) is *binarised* as ``M_t >= 0.5``
  (:data:`~dermogaze.metrics.diagnosis.BINARY_THRESHOLD`).
* The IoU (Jaccard index) of two binary masks is ``|A ∩ B| / |A ∪ B|``; a binarised prediction
  with no pixel therefore has IoU 0 with every present structure (a present GT is never empty).
* The *soft* IoU of a probability mask ``P`` and a binary mask ``G`` is
  ``Σ P·G / (Σ P + Σ G - Σ P·G)`` (the complement of the softIoU loss of docs/design.md §5, ε-free).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DataError
from ..structures import STRUCTURES
from .diagnosis import BINARY_THRESHOLD

#: IoU thresholds of the 2018 Data Science Bowl metric: 0.50, 0.55, ..., 0.95 (rounded, so that
#: ``0.6`` really is 0.6 and not ``0.6000000000000001``).
IOU_THRESHOLDS: np.ndarray = np.round(np.arange(0.5, 1.0, 0.05), 2)


# ----------------------------------------------------------------------------------------------
# IoU helpers
# ----------------------------------------------------------------------------------------------


def _flat(masks: np.ndarray) -> np.ndarray:
    """``(K, H, W)`` → ``(K, H*W)`` float64 (exact pixel counts for any image size)."""
    masks = np.asarray(masks)
    return masks.reshape(masks.shape[0], int(np.prod(masks.shape[1:]))).astype(np.float64)  # (K, H*W)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair of binary masks.

    Args:
        a: ``(K, H, W)`` binary masks (rows).
        b: ``(L, H, W)`` binary masks (columns).

    Returns:
        ``(K, L)`` float64 IoU; a pair whose union is empty scores 0.
    """
    fa, fb = _flat(np.asarray(a) > 0), _flat(np.asarray(b) > 0)
    inter = fa @ fb.T  # (K, L)
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter  # (K, L)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def soft_iou_matrix(gt: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Soft IoU ``Σ P·G / (Σ P + Σ G - Σ P·G)`` of every GT mask with every probability mask.

    Args:
        gt: ``(K, H, W)`` binary GT masks.
        probs: ``(L, H, W)`` predicted probabilities in [0, 1].

    Returns:
        ``(K, L)`` float64; 0 where the denominator is 0.
    """
    g, p = _flat(np.asarray(gt) > 0), _flat(probs)
    inter = g @ p.T  # (K, L)
    union = g.sum(1)[:, None] + p.sum(1)[None, :] - inter  # (K, L)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _check_structure_args(gt_masks: np.ndarray, present: np.ndarray, pred_masks: np.ndarray) -> tuple:
    gt_masks = np.asarray(gt_masks) > 0
    present = np.asarray(present, dtype=bool).reshape(-1)
    pred_masks = np.asarray(pred_masks, dtype=np.float64)
    if gt_masks.ndim != 3 or pred_masks.ndim != 3:
        raise ValueError(f"expected (S,H,W) GT and (T,H,W) predicted masks, got {gt_masks.shape}, {pred_masks.shape}")
    if gt_masks.shape[1:] != pred_masks.shape[1:]:
        raise ValueError(f"GT masks {gt_masks.shape[1:]} and predicted masks {pred_masks.shape[1:]} differ in size")
    if present.shape[0] != gt_masks.shape[0]:
        raise ValueError(f"present has {present.shape[0]} entries for {gt_masks.shape[0]} GT masks")
    return gt_masks, present, pred_masks


# ----------------------------------------------------------------------------------------------
# mAP at IoU thresholds (paper Eq. 20, 2018 Data Science Bowl)
# ----------------------------------------------------------------------------------------------


def precision_at_thresholds(iou: np.ndarray, thresholds: Sequence[float] = IOU_THRESHOLDS) -> np.ndarray:
    """``precision(τ) = TP / (TP + FP + FN)`` (Eq. 20) for each threshold, from a GT × prediction IoU matrix.

    ``matches = iou > τ``; TP = GT rows with exactly one match; FP = prediction columns with no
    match; FN = GT rows with no match (docs/design.md §6). A GT row matched by two or more predictions is
    neither TP nor FN, and its matching predictions are not FP (the Data Science Bowl kernel's
    definition, kept as docs/design.md §6 fixes it). Decision: when ``TP = 0`` the precision is 0, which also
    covers the otherwise undefined ``0/0`` (every GT matched several times, every prediction
    matching) and images with no present structure (all predictions are FP).

    Args:
        iou: ``(G, T)`` IoU of present GT structures (rows) and predictions (columns).
        thresholds: IoU thresholds τ.

    Returns:
        ``(len(thresholds),)`` float64 precisions.
    """
    iou = np.asarray(iou, dtype=np.float64)
    out = np.zeros(len(thresholds), dtype=np.float64)
    for k, tau in enumerate(thresholds):
        matches = iou > tau  # (G, T)
        per_row, per_col = matches.sum(axis=1), matches.sum(axis=0)
        tp = int(np.sum(per_row == 1))
        fp = int(np.sum(per_col == 0))
        fn = int(np.sum(per_row == 0))
        out[k] = tp / (tp + fp + fn) if tp > 0 else 0.0
    return out


def structure_iou_matrix(
    gt_masks: np.ndarray,
    present: np.ndarray,
    pred_masks: np.ndarray,
    pred_classes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """IoU between the present GT structures and the binarised predictions.

    Args:
        gt_masks: ``(S, H, W)`` binary GT masks, one per structure.
        present: ``(S,)`` bool, structures present in the image.
        pred_masks: ``(T, H, W)`` predicted probabilities, binarised at 0.5.
        pred_classes: ``(T,)`` predicted structure index per step; when given, the IoU of a
            prediction with a GT of another class is set to 0 (class-aware).

    Returns:
        ``(iou (G, T), gt_index (G,))``: the matrix and the structure index of each row.
    """
    gt_masks, present, pred_masks = _check_structure_args(gt_masks, present, pred_masks)
    rows = np.flatnonzero(present)  # (G,)
    iou = iou_matrix(gt_masks[rows], pred_masks >= BINARY_THRESHOLD)  # (G, T)
    if pred_classes is not None:
        pred_classes = np.asarray(pred_classes).reshape(-1)
        if pred_classes.shape[0] != pred_masks.shape[0]:
            raise ValueError(f"{pred_classes.shape[0]} predicted classes for {pred_masks.shape[0]} masks")
        iou = np.where(rows[:, None] == pred_classes[None, :], iou, 0.0)
    return iou, rows


def map_iou(
    gt_masks: np.ndarray,
    present: np.ndarray,
    pred_masks: np.ndarray,
    pred_classes: np.ndarray | None = None,
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> float:
    """Per-image mean average precision over IoU thresholds (paper Eq. 20, docs/design.md §6).

    Builds the IoU matrix of the present GT structures (rows) and the ``T`` binarised predictions
    (columns), computes :func:`precision_at_thresholds` at each τ in ``thresholds`` and returns
    their mean. Class-aware when ``pred_classes`` is given (a prediction can only match the GT of
    its predicted class, as in the paper), class-agnostic otherwise. The dataset score is the mean
    of this value over images.

    Args:
        gt_masks: ``(S, H, W)`` bool GT masks (S = 6).
        present: ``(S,)`` bool.
        pred_masks: ``(T, H, W)`` float probabilities.
        pred_classes: ``(T,)`` int or None.
        thresholds: IoU thresholds (default 0.50, 0.55, ..., 0.95).

    Returns:
        The image score in [0, 1].
    """
    iou, _ = structure_iou_matrix(gt_masks, present, pred_masks, pred_classes)
    return float(precision_at_thresholds(iou, thresholds).mean())


# ----------------------------------------------------------------------------------------------
# Structure classification (Fig. 6)
# ----------------------------------------------------------------------------------------------


def pair_with_ground_truth(gt_masks: np.ndarray, present: np.ndarray, pred_masks: np.ndarray) -> np.ndarray:
    """The GT structure of each step: the present structure of highest soft IoU with ``M_t`` (docs/design.md §6).

    The soft IoU is computed on the probabilities (no binarisation). Several steps may be paired
    with the same structure. Ties go to the lowest structure index.

    Args:
        gt_masks: ``(S, H, W)`` binary GT masks.
        present: ``(S,)`` bool.
        pred_masks: ``(T, H, W)`` predicted probabilities.

    Returns:
        ``(T,)`` int64 structure index per step, ``-1`` for every step when no structure is present.
    """
    gt_masks, present, pred_masks = _check_structure_args(gt_masks, present, pred_masks)
    rows = np.flatnonzero(present)
    if rows.size == 0:
        return np.full(pred_masks.shape[0], -1, dtype=np.int64)
    soft = soft_iou_matrix(gt_masks[rows], pred_masks)  # (G, T)
    return rows[np.argmax(soft, axis=0)].astype(np.int64)


def confusion_matrix(
    gt_classes: np.ndarray, pred_classes: np.ndarray, n: int = len(STRUCTURES)
) -> tuple[np.ndarray, np.ndarray]:
    """Structure confusion matrix (Fig. 6): rows = GT structure, columns = predicted structure.

    Pairs whose GT class is negative (no present structure) are ignored.

    Args:
        gt_classes: ``(K,)`` GT structure index of each predicted mask.
        pred_classes: ``(K,)`` predicted structure index.
        n: number of classes.

    Returns:
        ``(counts (n, n) int64, row_normalised (n, n) float64)``; each row of the normalised matrix
        sums to 1, a row whose GT class never occurred is NaN.
    """
    gt = np.asarray(gt_classes, dtype=np.int64).reshape(-1)
    pred = np.asarray(pred_classes, dtype=np.int64).reshape(-1)
    if gt.shape != pred.shape:
        raise ValueError(f"{gt.size} GT classes for {pred.size} predicted classes")
    keep = gt >= 0
    gt, pred = gt[keep], pred[keep]
    if np.any(gt >= n) or np.any(pred < 0) or np.any(pred >= n):
        raise ValueError(f"class indices must lie in [0, {n})")
    counts = np.bincount(gt * n + pred, minlength=n * n).reshape(n, n)  # (n, n)
    totals = counts.sum(axis=1, keepdims=True)  # (n, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)
    return counts.astype(np.int64), normalised


def classification_accuracy(counts: np.ndarray) -> float:
    """Fraction of predicted masks whose class equals their paired GT class (NaN when empty)."""
    total = counts.sum()
    return float(np.trace(counts) / total) if total else math.nan


# ----------------------------------------------------------------------------------------------
# Per-structure Jaccard
# ----------------------------------------------------------------------------------------------


def per_structure_jaccard(
    gt_masks: np.ndarray, present: np.ndarray, pred_masks: np.ndarray, pred_classes: np.ndarray
) -> np.ndarray:
    """Jaccard index of each present structure against the steps that claim it, for one image.

    Definition (the decision of this project): for each structure ``s`` present in the GT, the IoU
    between the GT mask of ``s`` and the union of the binarised masks ``M_t >= 0.5`` of the steps
    whose predicted class is ``s``. When no step predicts ``s`` (or their masks are empty) the union
    is empty and the score is 0: a structure the model never names is a miss. The dataset value of
    ``s`` is the mean over the images where ``s`` is present.

    Args:
        gt_masks: ``(S, H, W)`` bool, present: ``(S,)`` bool, pred_masks: ``(T, H, W)`` float,
        pred_classes: ``(T,)`` int.

    Returns:
        ``(S,)`` float64, NaN for the structures absent from the image.
    """
    gt_masks, present, pred_masks = _check_structure_args(gt_masks, present, pred_masks)
    named = named_masks(pred_masks, pred_classes, gt_masks.shape[0])  # (S, H, W)
    out = np.full(gt_masks.shape[0], np.nan)
    for s in np.flatnonzero(present):
        out[s] = iou_matrix(gt_masks[s][None], named[s][None])[0, 0]
    return out


def named_masks(pred_masks: np.ndarray, pred_classes: np.ndarray, num_structures: int) -> np.ndarray:
    """The predicted mask of every structure: the union of the steps that name it, each binarised at 0.5.

    ``out[s] = OR over the steps t with argmax pred_t = s of (M_t >= 0.5)``; a structure no step
    names gets an empty mask. This is the structure mask dermogaze reports: the per-structure
    Jaccard, the ISIC 2018 Task 2 score and ``dermogaze predict --format isic2018-task2`` use it.

    Args:
        pred_masks: ``(T, H, W)`` probabilities; pred_classes: ``(T,)`` structure index of each step.
        num_structures: ``S``, the size of the structure set.

    Returns:
        bool ``(S, H, W)``.
    """
    pred_masks = np.asarray(pred_masks)
    pred_classes = np.asarray(pred_classes).reshape(-1)
    binary = pred_masks >= BINARY_THRESHOLD  # (T, H, W)
    out = np.zeros((num_structures, *pred_masks.shape[1:]), dtype=bool)
    for t, s in enumerate(pred_classes):
        out[s] |= binary[t]
    return out


# ----------------------------------------------------------------------------------------------
# ISIC 2018 Task 2 Jaccard (the official scorer's definition)
# ----------------------------------------------------------------------------------------------


def task2_confusion(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per attribute, the image's binary confusion matrix normalised to sum to 1 (``isic-challenge-scoring``).

    Args:
        gt, pred: bool ``(F, H, W)``: ground-truth and predicted masks of F attributes of one image.

    Returns:
        float64 ``(F, 4)``: the fractions of the image's pixels that are TP, FP, FN, TN.
    """
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape or gt.ndim != 3:
        raise ValueError(f"task2_confusion: expected two (F, H, W) masks, got {gt.shape} and {pred.shape}")
    n = gt.shape[1] * gt.shape[2]
    tp = (gt & pred).sum(axis=(1, 2))
    fp = (~gt & pred).sum(axis=(1, 2))
    fn = (gt & ~pred).sum(axis=(1, 2))
    return np.stack([tp, fp, fn, n - tp - fp - fn], axis=1) / n  # (F, 4)


def _confusion_jaccard(cm: np.ndarray) -> float:
    """``TP / (TP + FP + FN)`` of a ``(4,)`` confusion; 1 when the denominator is 0 (the scorer's rule)."""
    denominator = cm[0] + cm[1] + cm[2]
    return 1.0 if denominator == 0 else float(cm[0] / denominator)


def task2_jaccard(confusions: np.ndarray, attributes: Sequence[str]) -> dict[str, Any]:
    """ISIC 2018 Task 2 Jaccard as ``isic_challenge_scoring.task2.score`` computes it.

    Every (image, attribute) pair counts, the attribute present in the image or not: its normalised
    confusion matrix (:func:`task2_confusion`) is summed over the images, per attribute, and the
    Jaccard of the sum is the attribute's score. The **micro-average** (the headline: the Jaccard of
    the sum over every image and attribute) is what the challenge ranked; the **mean over the
    attributes** is what papers also quote. Both are returned, labelled.

    Args:
        confusions: ``(N, F, 4)`` per image and attribute (TP, FP, FN, TN fractions).
        attributes: the F attribute names.

    Returns:
        ``{"micro_average", "attribute_mean", "per_attribute": {name: jaccard}, "n_images"}``.
    """
    c = np.asarray(confusions, dtype=np.float64).reshape(-1, len(attributes), 4)
    per = {name: _confusion_jaccard(c[:, f].sum(axis=0)) for f, name in enumerate(attributes)}
    return {
        "micro_average": _confusion_jaccard(c.sum(axis=(0, 1))),
        "attribute_mean": float(np.mean(list(per.values()))),
        "per_attribute": per,
        "n_images": int(c.shape[0]),
    }


# ----------------------------------------------------------------------------------------------
# ISIC 2017 Task 2 superpixel AUC
# ----------------------------------------------------------------------------------------------


def structure_pixel_scores(pred_masks: np.ndarray, structure_probs: np.ndarray) -> np.ndarray:
    """Per-pixel score of each structure: ``max_t M_t(x) · pred_t[s]`` (docs/design.md §6).

    Args:
        pred_masks: ``(T, H, W)`` mask probabilities.
        structure_probs: ``(T, S)`` softmax of the structure logits.

    Returns:
        ``(S, H, W)`` float32 scores.
    """
    m = np.asarray(pred_masks, dtype=np.float32)
    p = np.asarray(structure_probs, dtype=np.float32)
    return np.max(m[:, None] * p[:, :, None, None], axis=0)  # (T, S, H, W) → (S, H, W)


def superpixel_means(scores: np.ndarray, superpixels: np.ndarray, n_superpixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Average per-pixel scores inside each superpixel.

    Args:
        scores: ``(K, H, W)`` scores.
        superpixels: ``(H, W)`` int superpixel index map.
        n_superpixels: number of superpixels of the image (length of its label lists).

    Returns:
        ``(means (n_superpixels, K), visible (n_superpixels,) bool)``; a superpixel with no pixel
        in the map (cropped away) has ``visible = False`` and a mean of 0.
    """
    idx = np.asarray(superpixels).reshape(-1).astype(np.int64)  # (H*W,)
    if idx.size and (idx.min() < 0 or idx.max() >= n_superpixels):
        bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
        raise DataError(f"superpixel index {bad} outside the {n_superpixels} superpixel labels of the image")
    counts = np.bincount(idx, minlength=n_superpixels).astype(np.float64)  # (n,)
    scores = np.asarray(scores, dtype=np.float64).reshape(scores.shape[0], -1)  # (K, H*W)
    sums = np.stack([np.bincount(idx, weights=s, minlength=n_superpixels) for s in scores], axis=1)  # (n, K)
    visible = counts > 0
    means = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=visible[:, None])
    return means, visible


def superpixel_auc(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> np.ndarray:
    """ISIC 2017 Task 2 ROC AUC per feature, pooling the superpixels of every image.

    Only the four dermoscopic features are scored (decision): Task 2 labels superpixels with
    those four only, and a lesion label per superpixel would have to be invented from the Part 1
    mask; the lesion and skin segmentations are measured by the per-structure Jaccard instead.
    Superpixels cropped away by the center crop are left out (they have no pixel to score).

    Args:
        scores: per image ``(n_i, F)`` superpixel scores (only visible superpixels).
        labels: per image ``(n_i, F)`` superpixel labels in [0, 1]; ``>= 0.5`` is positive.

    Returns:
        ``(F,)`` AUC, NaN for a feature whose pooled labels hold a single class or whose scores are
        not all finite (a diverged model).
    """
    from sklearn.metrics import roc_auc_score  # here: the commands that only apply a model never need it

    s = np.concatenate([np.asarray(x, dtype=np.float64) for x in scores], axis=0)  # (N, F)
    y = np.concatenate([np.asarray(x, dtype=np.float64) for x in labels], axis=0) >= 0.5  # (N, F)
    out = np.full(s.shape[1], np.nan)
    for f in range(s.shape[1]):
        if 0 < y[:, f].sum() < y.shape[0] and np.isfinite(s[:, f]).all():
            out[f] = roc_auc_score(y[:, f], s[:, f])
    return out
