"""Evaluation metrics of SPEC §6 (paper §4.1): diagnosis, structure mAP@IoU, confusion matrix, Jaccard, Task 2 AUC.

Everything here works on numpy arrays (torch tensors are converted by :class:`EvaluationAccumulator`),
so the definitions can be read and tested without a model. Conventions shared by every function:

* Structures are indexed in the order of the data's structure set (``info["structures"]``, a
  checkpoint's ``structures``): for ISIC 2017 lesion, skin, pigment network, negative network,
  milia-like cysts, streaks; for ISIC 2018 the five Task 2 attributes follow lesion and skin.
* A ground-truth (GT) structure is *present* in an image when its mask has at least one pixel
  (SPEC §1); metrics only ever compare predictions with present structures.
* A predicted mask ``M_t`` (probabilities in [0, 1]) is *binarised* as ``M_t >= 0.5``.
* The IoU (Jaccard index) of two binary masks is ``|A ∩ B| / |A ∪ B|``; a binarised prediction
  with no pixel therefore has IoU 0 with every present structure (a present GT is never empty).
* The *soft* IoU of a probability mask ``P`` and a binary mask ``G`` is
  ``Σ P·G / (Σ P + Σ G - Σ P·G)`` (the complement of the softIoU loss of SPEC §5, ε-free).

What :meth:`EvaluationAccumulator.compute` returns (``NaN`` where a metric is undefined, written
as ``null`` by :func:`dermogaze.io.write_json`)::

    {
      "n_images": int,
      "diagnosis": {"auc", "ap", "sensitivity", "specificity", "accuracy", "threshold", "n", "n_pos"},
      "structures": {                           # only for variants with a structure decoder
        "n_images": int,                        # images with at least one present GT structure
        "map_iou_class_aware": float,           # paper's mAP@IoU (Eq. 20), mean over images
        "map_iou_class_agnostic": float,
        "iou_thresholds": [float, ...],
        "precision_class_aware": [float, ...],  # mean over images of precision(τ), one per τ
        "precision_class_agnostic": [float, ...],
        "accuracy": float,                      # structure classification accuracy (§6 pairing)
        "confusion_counts": S×S ints,           # rows = GT structure, columns = predicted
        "confusion_matrix": S×S floats,         # row-normalised (Fig. 6); NaN rows never occurred
        "jaccard": {structure: float},          # per-structure Jaccard (see per_structure_jaccard)
        "jaccard_n": {structure: int},          # images where the structure is present
        "jaccard_lesion_skin": float,           # mean of the lesion and skin Jaccard
        "jaccard_mean": float,                  # mean over the structures that occurred
      },
      "superpixel_auc": {feature: float, ..., "mean": float, "n_superpixels": int, "n_images": int},
                                                # only when superpixels and their labels are given
      "task2_jaccard": {"micro_average", "attribute_mean", "per_attribute": {attribute: float}, "n_images"},
                                                # ISIC 2018 structure set only (task2_jaccard())
    }
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import Tensor

from .clinical import format_interval
from .errors import DataError, DermogazeError
from .io import write_csv
from .models.output import GazeOutput
from .structures import DERMOSCOPIC_FEATURES, ISIC2018_STRUCTURES, STRUCTURES, dermoscopic, short_names

#: IoU thresholds of the 2018 Data Science Bowl metric: 0.50, 0.55, ..., 0.95 (rounded, so that
#: ``0.6`` really is 0.6 and not ``0.6000000000000001``).
IOU_THRESHOLDS: np.ndarray = np.round(np.arange(0.5, 1.0, 0.05), 2)

#: Threshold on the predicted masks and on the melanoma probability.
BINARY_THRESHOLD = 0.5


# ----------------------------------------------------------------------------------------------
# Diagnosis
# ----------------------------------------------------------------------------------------------


def diagnosis_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = BINARY_THRESHOLD) -> dict[str, Any]:
    """Melanoma-vs-rest metrics of one set of predictions (paper §4.1, Eq. 21).

    * ``auc``: area under the ROC curve (``sklearn.metrics.roc_auc_score``).
    * ``ap``: average precision (``sklearn.metrics.average_precision_score``: the step-wise
      ``Σ_n (R_n - R_{n-1}) P_n``, not an interpolated area).
    * ``sensitivity`` = TP / (TP + FN) and ``specificity`` = TN / (TN + FP) where an image is
      predicted melanoma when ``prob >= threshold``; ``accuracy`` = (TP + TN) / n.

    Undefined values are ``NaN`` rather than errors: AUC and AP when only one class is present or
    a probability is NaN (a diverged model: :func:`check_finite_outputs` is what refuses it),
    sensitivity without melanoma, specificity without benign images, everything when ``n = 0``.

    Args:
        labels: ``(N,)`` ints, 1 = melanoma, 0 = benign.
        probs: ``(N,)`` melanoma probabilities.
        threshold: decision threshold for sensitivity/specificity/accuracy.

    Returns:
        dict with ``auc, ap, sensitivity, specificity, accuracy, threshold, n, n_pos``.
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if labels.shape != probs.shape:
        raise ValueError(f"labels {labels.shape} and probs {probs.shape} differ in length")
    if np.any((labels != 0) & (labels != 1)):
        raise ValueError("diagnosis labels must be 0 (benign) or 1 (melanoma)")
    n, n_pos = int(labels.size), int(labels.sum())
    n_neg = n - n_pos
    if n_pos > 0 and n_neg > 0 and np.isfinite(probs).all():
        auc = float(roc_auc_score(labels, probs))
        ap = float(average_precision_score(labels, probs))
    else:
        auc = ap = math.nan
    pred = probs >= threshold
    tp = int(np.sum(pred & (labels == 1)))
    tn = int(np.sum(~pred & (labels == 0)))
    return {
        "auc": auc,
        "ap": ap,
        "sensitivity": tp / n_pos if n_pos else math.nan,
        "specificity": tn / n_neg if n_neg else math.nan,
        "accuracy": (tp + tn) / n if n else math.nan,
        "threshold": float(threshold),
        "n": n,
        "n_pos": n_pos,
    }


def check_finite_outputs(ids: Sequence[str], outputs: Mapping[str, Any], model: str) -> None:
    """Refuse NaN or infinite model outputs before any metric, record or file is made of them.

    Args:
        ids: the image ids, one per row of every output.
        outputs: what the output is (``"melanoma probabilities"``) → its values, image after image
            (read as ``(N, -1)``).
        model: the model as the message names it (``"the model in RUN/best.pt"``).

    Raises:
        DermogazeError: e.g. ``the model in RUN/best.pt produced non-finite melanoma probabilities
            for 3 of 8 images (e.g. ISIC_0000001): its weights are corrupt or it diverged ...``.
    """
    if not len(ids):
        return
    for what, values in outputs.items():
        v = np.asarray(values, dtype=np.float64).reshape(len(ids), -1)  # (N, values per image)
        bad = ~np.isfinite(v).all(axis=1)  # (N,)
        if bad.any():
            first = ids[int(np.argmax(bad))]
            which = str(first) if len(ids) == 1 else f"{int(bad.sum())} of {len(ids)} images (e.g. {first})"
            raise DermogazeError(
                f"{model} produced non-finite {what} for {which}: its weights are corrupt or it diverged; "
                "use another checkpoint (e.g. an earlier epoch's)"
            )


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
    match; FN = GT rows with no match (SPEC §6). A GT row matched by two or more predictions is
    neither TP nor FN, and its matching predictions are not FP (the Data Science Bowl kernel's
    definition, kept as SPEC §6 fixes it). Decision: when ``TP = 0`` the precision is 0, which also
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
    """Per-image mean average precision over IoU thresholds (paper Eq. 20, SPEC §6).

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
    """The GT structure of each step: the present structure of highest soft IoU with ``M_t`` (SPEC §6).

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
    """Per-pixel score of each structure: ``max_t M_t(x) · pred_t[s]`` (SPEC §6).

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
    s = np.concatenate([np.asarray(x, dtype=np.float64) for x in scores], axis=0)  # (N, F)
    y = np.concatenate([np.asarray(x, dtype=np.float64) for x in labels], axis=0) >= 0.5  # (N, F)
    out = np.full(s.shape[1], np.nan)
    for f in range(s.shape[1]):
        if 0 < y[:, f].sum() < y.shape[0] and np.isfinite(s[:, f]).all():
            out[f] = roc_auc_score(y[:, f], s[:, f])
    return out


# ----------------------------------------------------------------------------------------------
# Accumulator
# ----------------------------------------------------------------------------------------------


def _numpy(x: Tensor | None) -> np.ndarray | None:
    """A tensor on any device → numpy (floating tensors as float32)."""
    if x is None:
        return None
    x = x.detach()
    return (x.float() if x.is_floating_point() else x).cpu().numpy()


def _softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


class EvaluationAccumulator:
    """Collects one evaluation pass batch by batch and computes every SPEC §6 metric at the end.

    The one evaluation path of dermogaze: validation during training and ``dermogaze evaluate``
    both feed one. Per image it keeps only small things (probability, label, per-image mAP values,
    pairings, Jaccard values, superpixel means), so memory does not grow with the image size, and
    it pickles cheaply: in a distributed run every rank fills its own from its shard and
    :meth:`merge` combines the gathered ones.

    Args:
        structures: structure names in index order (a checkpoint's ``structures``; default: ISIC 2017's).
            With the ISIC 2018 set, the official Task 2 Jaccard of the five attributes is computed too.
        thresholds: IoU thresholds of the mAP.
        threshold: decision threshold on the melanoma probability (a checkpoint's, chosen on validation).
        temperature: temperature scaling of the diagnosis (a checkpoint's): the probabilities it keeps
            are ``softmax(logits / T)[:, 1]``; the margins (log-odds before scaling) are kept too.
    """

    def __init__(
        self,
        structures: Sequence[str] = STRUCTURES,
        thresholds: Sequence[float] = IOU_THRESHOLDS,
        threshold: float = BINARY_THRESHOLD,
        temperature: float = 1.0,
    ) -> None:
        self.structures = tuple(structures)
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.threshold = float(threshold)
        self.temperature = float(temperature)
        # Task 2 features known to the model: their structure index and their label column.
        self.features = tuple(s for s in DERMOSCOPIC_FEATURES if s in self.structures)
        self._feature_idx = [self.structures.index(s) for s in self.features]
        self._feature_col = [DERMOSCOPIC_FEATURES.index(s) for s in self.features]
        # ISIC 2018 Task 2 attributes: their structure indices, and per image their normalised confusions.
        self.attributes = dermoscopic(self.structures) if self.structures == ISIC2018_STRUCTURES else ()
        self._attribute_idx = [self.structures.index(s) for s in self.attributes]
        self._task2: list[np.ndarray] = []
        self.indices: list[int] = []
        self.ids: list[str] = []
        self.probs: list[float] = []
        self.margins: list[float] = []
        self.labels: list[int | None] = []
        self.tta_probs: list[float] = []  # mean P(melanoma) over the 8 views (with test-time augmentation)
        self.tta_spread: list[float] = []  # its standard deviation over the views
        self._prec_aware: list[np.ndarray] = []
        self._prec_agnostic: list[np.ndarray] = []
        self._pair_gt: list[np.ndarray] = []
        self._pair_pred: list[np.ndarray] = []
        self._jaccard: list[np.ndarray] = []
        self._sp_scores: list[np.ndarray] = []
        self._sp_labels: list[np.ndarray] = []
        self._has_decoder = False

    def __len__(self) -> int:
        return len(self.probs)

    def update(
        self,
        out: GazeOutput,
        batch: Mapping[str, Any],
        sp_features: Sequence[np.ndarray] | None = None,
        tta_margins: Tensor | None = None,
    ) -> None:
        """Add one batch.

        Args:
            out: the model's output on the batch (``masks`` and ``structure_logits`` feed the
                structure metrics when the variant has a decoder).
            batch: the collated batch: ``label`` ``(B,)`` tensor (optional; negative = unknown,
                skipped by the diagnosis metrics), ``id`` (list of B str, optional), ``index``
                (dataset indices, optional: they order :attr:`predictions` after a merge), and for
                the structure metrics ``masks`` ``(B, S, H, W)`` and ``present`` ``(B, S)``, for
                Task 2 ``superpixels`` ``(B, H, W)`` cropped like the masks.
            sp_features: for each image of the batch, its ``(n_i, 4)`` superpixel labels in
                :data:`~dermogaze.structures.DERMOSCOPIC_FEATURES` order (``SplitArrays.sp_features``
                indexed by ``batch["index"]``). Task 2 is computed only when both are given.
            tta_margins: ``(V, B)`` melanoma log-odds of the batch under V views (test-time
                augmentation, the identity included): their calibrated probabilities are averaged.
        """
        probs = _numpy(out.calibrated_melanoma_prob(self.temperature))  # (B,)
        self.margins.extend(float(m) for m in _numpy(out.melanoma_margin))
        if tta_margins is not None:
            views = _numpy(torch.sigmoid(tta_margins / self.temperature)).astype(np.float64)  # (V, B)
            self.tta_probs.extend(views.mean(axis=0).tolist())
            self.tta_spread.extend(views.std(axis=0).tolist())
        b = probs.shape[0]
        start = len(self.ids)
        ids = batch.get("id")
        if ids is None:  # no ids in the batch: number the images in the order seen
            ids = [str(start + k) for k in range(b)]
        index = batch.get("index")
        self.indices.extend(range(start, start + b) if index is None else (int(i) for i in index))
        self.ids.extend(str(i) for i in ids)
        self.probs.extend(float(p) for p in probs)
        labels = _numpy(batch.get("label"))
        if labels is None:
            self.labels.extend([None] * b)
        else:
            self.labels.extend(int(v) if v >= 0 else None for v in labels.reshape(-1))

        if out.masks is None or out.structure_logits is None or "present" not in batch:
            return
        self._has_decoder = True
        masks = _numpy(out.masks)  # (B, T, H, W)
        struct_probs = _softmax(_numpy(out.structure_logits))  # (B, T, S)
        pred_classes = struct_probs.argmax(-1)  # (B, T)
        gt = _numpy(batch["masks"]) > 0.5  # (B, S, H, W)
        present = _numpy(batch["present"]).astype(bool)  # (B, S)
        sp = _numpy(batch.get("superpixels"))
        for i in range(b):
            if present[i].any():
                iou_aware, _ = structure_iou_matrix(gt[i], present[i], masks[i], pred_classes[i])
                iou_agn, _ = structure_iou_matrix(gt[i], present[i], masks[i], None)
                self._prec_aware.append(precision_at_thresholds(iou_aware, self.thresholds))
                self._prec_agnostic.append(precision_at_thresholds(iou_agn, self.thresholds))
                self._pair_gt.append(pair_with_ground_truth(gt[i], present[i], masks[i]))
                self._pair_pred.append(pred_classes[i])
                self._jaccard.append(per_structure_jaccard(gt[i], present[i], masks[i], pred_classes[i]))
                if self._attribute_idx:
                    named = named_masks(masks[i], pred_classes[i], len(self.structures))  # (S, H, W)
                    self._task2.append(task2_confusion(gt[i][self._attribute_idx], named[self._attribute_idx]))
            if sp is not None and sp_features is not None and self._feature_idx:
                labels_i = np.asarray(sp_features[i], dtype=np.float64)  # (n_i, 4)
                scores = structure_pixel_scores(masks[i], struct_probs[i][:, self._feature_idx])  # (F, H, W)
                means, visible = superpixel_means(scores, sp[i], labels_i.shape[0])
                self._sp_scores.append(means[visible])
                self._sp_labels.append(labels_i[visible][:, self._feature_col])

    def merge(self, others: Sequence[EvaluationAccumulator]) -> EvaluationAccumulator:
        """Add the images of ``others`` (the accumulators of the other ranks) to this one.

        Afterwards :attr:`predictions` are in the order of the dataset indices (each index once).
        The per-image structure values are concatenated: their means do not depend on the order.
        """
        for other in others:
            for name in ("indices", "ids", "probs", "margins", "labels", "tta_probs", "tta_spread", "_prec_aware",
                         "_prec_agnostic", "_pair_gt", "_pair_pred", "_jaccard", "_sp_scores", "_sp_labels", "_task2"):
                getattr(self, name).extend(getattr(other, name))
            self._has_decoder |= other._has_decoder
        order = np.argsort(np.asarray(self.indices, dtype=np.int64), kind="stable")
        for name in ("indices", "ids", "probs", "margins", "labels", "tta_probs", "tta_spread"):
            values = getattr(self, name)
            if values:
                setattr(self, name, [values[k] for k in order])
        return self

    @property
    def predictions(self) -> dict[str, list]:
        """``{"ids": [...], "probs": [...], "labels": [... or None]}``, in the order seen (by index after a merge)."""
        return {"ids": list(self.ids), "probs": list(self.probs), "labels": list(self.labels)}

    def compute(self) -> dict[str, Any]:
        """Every metric of SPEC §6 (see the module docstring for the keys); NaN where undefined."""
        known = [k for k, v in enumerate(self.labels) if v is not None]
        result: dict[str, Any] = {
            "n_images": len(self.probs),
            "diagnosis": diagnosis_metrics(
                np.array([self.labels[k] for k in known], dtype=np.int64),
                np.array([self.probs[k] for k in known], dtype=np.float64),
                self.threshold,
            ),
        }
        if self.probs and not known:
            result["diagnosis_absent"] = (
                f"none of the {len(self.probs)} images has a diagnosis label (a structure-only collection, e.g. "
                "ISIC 2018 Task 1-2; prepare it with --labels CSV to score the diagnosis)"
            )
        if self._has_decoder:
            result["structures"] = self._structure_metrics()
        if self._sp_scores:
            auc = superpixel_auc(self._sp_scores, self._sp_labels)
            sp: dict[str, Any] = {name: float(a) for name, a in zip(self.features, auc, strict=True)}
            sp["mean"] = _nanmean(auc)
            sp["n_superpixels"] = int(sum(s.shape[0] for s in self._sp_scores))
            sp["n_images"] = len(self._sp_scores)
            result["superpixel_auc"] = sp
        if self._task2:
            result["task2_jaccard"] = task2_jaccard(np.stack(self._task2), self.attributes)
        return result

    def _structure_metrics(self) -> dict[str, Any]:
        n = len(self.structures)
        n_img = len(self._prec_aware)
        if n_img == 0:
            nan_rows = [[math.nan] * n for _ in range(n)]
            return {
                "n_images": 0,
                "map_iou_class_aware": math.nan,
                "map_iou_class_agnostic": math.nan,
                "iou_thresholds": [float(t) for t in self.thresholds],
                "precision_class_aware": [math.nan] * len(self.thresholds),
                "precision_class_agnostic": [math.nan] * len(self.thresholds),
                "accuracy": math.nan,
                "confusion_counts": [[0] * n for _ in range(n)],
                "confusion_matrix": nan_rows,
                "jaccard": {s: math.nan for s in self.structures},
                "jaccard_n": {s: 0 for s in self.structures},
                "jaccard_lesion_skin": math.nan,
                "jaccard_mean": math.nan,
            }
        aware = np.stack(self._prec_aware)  # (N, K)
        agnostic = np.stack(self._prec_agnostic)  # (N, K)
        counts, normalised = confusion_matrix(np.concatenate(self._pair_gt), np.concatenate(self._pair_pred), n)
        jac = np.stack(self._jaccard)  # (N, S), NaN where absent
        jac_n = (~np.isnan(jac)).sum(axis=0)
        jac_mean = np.array([np.nanmean(jac[:, s]) if jac_n[s] else math.nan for s in range(n)])
        by_name = dict(zip(self.structures, jac_mean.tolist(), strict=True))
        lesion_skin = [by_name[s] for s in ("lesion", "skin") if s in by_name]
        return {
            "n_images": n_img,
            "map_iou_class_aware": float(aware.mean(axis=1).mean()),
            "map_iou_class_agnostic": float(agnostic.mean(axis=1).mean()),
            "iou_thresholds": [float(t) for t in self.thresholds],
            "precision_class_aware": aware.mean(axis=0).tolist(),
            "precision_class_agnostic": agnostic.mean(axis=0).tolist(),
            "accuracy": classification_accuracy(counts),
            "confusion_counts": counts.tolist(),
            "confusion_matrix": normalised.tolist(),
            "jaccard": by_name,
            "jaccard_n": {s: int(c) for s, c in zip(self.structures, jac_n, strict=True)},
            "jaccard_lesion_skin": _nanmean(lesion_skin),
            "jaccard_mean": _nanmean(jac_mean),
        }


# ----------------------------------------------------------------------------------------------
# Output: JSON, CSV, terminal table
# ----------------------------------------------------------------------------------------------


def write_predictions_csv(predictions: Mapping[str, Sequence], path: str | Path) -> Path:
    """Write ``predictions.csv``: ``image_id,melanoma`` (ISIC 2017 Part 3 shape) and ``label`` when known.

    Args:
        predictions: :attr:`EvaluationAccumulator.predictions`.
        path: destination file (written atomically).
    """
    ids, probs, labels = predictions["ids"], predictions["probs"], predictions.get("labels")
    with_labels = labels is not None and all(v is not None for v in labels)
    header = ["image_id", "melanoma"] + (["label"] if with_labels else [])
    rows = (
        [i, f"{p:.6f}"] + ([int(labels[k])] if with_labels else [])
        for k, (i, p) in enumerate(zip(ids, probs, strict=True))
    )
    return write_csv(header, rows, path)


def format_value(v: Any, digits: int = 4) -> str:
    """A metric for a table: ``digits`` decimals, ``n/a`` for a missing or undefined value."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def clinical_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Terminal lines of the clinical statistics of an evaluation (:func:`dermogaze.evaluate.clinical_metrics`).

    Intervals read ``0.847 [0.81, 0.88]`` (95%, stratified bootstrap); sections that were not
    computed are left out.
    """
    lines: list[str] = []
    d, ci = metrics.get("diagnosis", {}), metrics.get("diagnosis_ci")
    decision = metrics.get("decision")
    if decision:
        lines.append(
            f"  decision threshold {decision['threshold']:.3f} ({decision['rule']}, chosen on the validation split)"
        )
    if ci:
        lines.append(
            "  95% intervals: " + "   ".join(
                f"{name} {format_interval(d.get(key), ci.get(key))}"
                for name, key in (("AUC", "auc"), ("AP", "ap"), ("sensitivity", "sensitivity"),
                                  ("specificity", "specificity"))
            )
        )
    ops = metrics.get("operating_points")
    if ops:
        for kind, other in (("specificity_at_sensitivity", "sensitivity"), ("sensitivity_at_specificity",
                                                                              "specificity")):
            cells = [
                f"{float(level):.0%} {format_interval(value, (ci or {}).get(f'{kind}_{level}'))}"
                for level, value in ops[kind].items()
            ]
            lines.append(f"  {kind.split('_at_')[0]} at {other}: " + "   ".join(cells))
    cal = metrics.get("calibration")
    if cal and cal.get("before"):
        b, a = cal["before"], cal["after"]
        lines.append(
            f"  calibration ({b['n_bins']} equal-mass bins), before -> after temperature scaling "
            f"(T = {cal['temperature']:.3f}): ECE {format_value(b['ece'], 3)} -> {format_value(a['ece'], 3)}   "
            f"MCE {format_value(b['mce'], 3)} -> {format_value(a['mce'], 3)}   "
            f"Brier {format_value(b['brier'], 3)} -> {format_value(a['brier'], 3)}"
        )
    tta = metrics.get("tta")
    if tta:
        auc = format_interval(tta["auc"], (tta["ci"] or {}).get("auc"))
        lines.append(
            f"  test-time augmentation ({tta['views']} views): AUC {auc}"
            f" vs {format_value(tta['auc_without'], 3)} without; P(melanoma) spread across views: mean "
            f"{tta['spread_mean']:.3f}, max {tta['spread_max']:.3f}"
        )
    for field, rows in (metrics.get("subgroups") or {}).items():
        lines += ["", f"Diagnosis by {field} (AUC only for groups with at least 10 melanoma and 10 benign images)"]
        width = max([len(r["group"]) for r in rows] + [5])
        lines.append(f"  {'group':<{width}}  {'images':>6}  {'melanoma':>8}  AUC [95% interval]")
        for r in rows:
            auc = format_interval(r["auc"], r["auc_ci"]) if r["auc"] is not None else "too few to say"
            lines.append(f"  {r['group']:<{width}}  {r['n']:>6}  {r['n_pos']:>8}  {auc}")
    cmp_ = metrics.get("compare")
    if cmp_:
        lines += [
            "",
            f"Comparison with {cmp_['other']} on {cmp_['n']} images (DeLong): AUC {cmp_['auc_a']:.3f} vs "
            f"{cmp_['auc_b']:.3f}, difference {format_interval(cmp_['difference'], cmp_['ci'])}, "
            f"z = {cmp_['z']:.2f}, p = {cmp_['p_value']:.3g}",
        ]
    return lines


def format_table(metrics: Mapping[str, Any]) -> str:
    """A readable plain-text summary of :meth:`EvaluationAccumulator.compute` (or its JSON reload).

    Returns:
        Multi-line string: diagnosis block, structure block (mAP, accuracy, Jaccard and Task 2 AUC
        per structure) and the row-normalised confusion matrix, each only when available.
    """
    lines: list[str] = []
    d = metrics.get("diagnosis", {})
    if metrics.get("diagnosis_absent"):
        lines.append(f"Diagnosis: not scored: {metrics['diagnosis_absent']}")
    else:
        lines.append(f"Diagnosis (melanoma vs rest): {d.get('n', 0)} images, {d.get('n_pos', 0)} melanoma")
        lines.append(
            f"  AUC {format_value(d.get('auc'))}   AP {format_value(d.get('ap'))}   "
            f"sensitivity {format_value(d.get('sensitivity'))}   specificity {format_value(d.get('specificity'))}   "
            f"(threshold {format_value(d.get('threshold'), 2)})"
        )
        lines += clinical_lines(metrics)
    s = metrics.get("structures")
    sp = metrics.get("superpixel_auc") or {}
    if s:
        lines.append("")
        lines.append(f"Structures: {s.get('n_images', 0)} images with ground truth")
        lines.append(
            f"  mAP@IoU[.50:.95] class-aware {format_value(s.get('map_iou_class_aware'))}   "
            f"class-agnostic {format_value(s.get('map_iou_class_agnostic'))}   "
            f"classification accuracy {format_value(s.get('accuracy'))}"
        )
        lines.append(
            f"  Jaccard lesion+skin {format_value(s.get('jaccard_lesion_skin'))}   "
            f"mean {format_value(s.get('jaccard_mean'))}"
        )
        names = list(s.get("jaccard", {}))
        width = max([len(n) for n in names] + [9])
        lines.append(f"  {'structure':<{width}}  {'present':>7}  {'Jaccard':>7}  {'Task2 AUC' if sp else '':>9}")
        for name in names:
            lines.append(
                f"  {name:<{width}}  {s.get('jaccard_n', {}).get(name, 0):>7}  {format_value(s['jaccard'][name]):>7}"
                f"  {format_value(sp.get(name)) if name in sp else '':>9}"
            )
        if sp:
            lines.append(f"  {'Task 2 mean':<{width}}  {'':>7}  {'':>7}  {format_value(sp.get('mean')):>9}")
        cm = s.get("confusion_matrix")
        if cm:
            short = short_names(names)
            lines.append("")
            lines.append("  Confusion matrix (rows: GT structure, columns: predicted; each row sums to 1)")
            lines.append("  " + " " * 9 + "".join(f"{c:>9}" for c in short))
            for name, row in zip(short, cm, strict=True):
                lines.append(f"  {name:<9}" + "".join(f"{format_value(v, 2):>9}" for v in row))
    elif sp:
        lines.append("")
        lines.append("Task 2 superpixel AUC: " + "  ".join(f"{k} {format_value(v)}" for k, v in sp.items()))
    t2 = metrics.get("task2_jaccard")
    if t2:
        lines.append("")
        lines.append(
            f"ISIC 2018 Task 2 Jaccard ({t2['n_images']} images; official scorer's definition): micro-average "
            f"{format_value(t2['micro_average'])} (the challenge's headline)   mean over attributes "
            f"{format_value(t2['attribute_mean'])}"
        )
        lines.append("  " + "   ".join(f"{k} {format_value(v)}" for k, v in t2["per_attribute"].items()))
    lines += explanation_lines(metrics.get("explanation"))
    return "\n".join(line.rstrip() for line in lines)


def explanation_lines(ex: Mapping[str, Any] | None) -> list[str]:
    """Terminal lines of the explanation measures (SPEC §6b, :class:`dermogaze.explanation.ExplanationAccumulator`).

    A per-structure table (pointing game matched and named, relevance mass and lift, images where
    the structure is absent), then the overall values, the gaze ablation, deletion/insertion against
    a random order, stability and the seconds the costly measures took.
    """
    if not ex:
        return []
    lines = ["", f"Explanations (SPEC §6b): {ex['n_images']} images"]
    pm, pn, rm, rl = (ex.get(k) for k in ("pointing_matched", "pointing_named", "relevance_mass", "relevance_lift"))
    if pm:
        pc = ex.get("pointing_centroid") or {"overall": None, "per_structure": {}}
        names = list(pm["per_structure"])
        width = max([len(n) for n in names] + [9])
        head = ("pointing", "named", "centroid", "relevance", "lift", "absent")
        lines.append(f"  {'structure':<{width}}" + "".join(f"{h:>11}" for h in head))
        rows = [(n, pm["per_structure"][n], pn["per_structure"][n], pc["per_structure"].get(n), rm["per_structure"][n],
                 rl["per_structure"][n]) for n in names]
        rows.append(("overall", pm["overall"], pn["overall"], pc["overall"], rm["overall"], rl["overall"]))
        for name, *values in rows:
            absent = pm["excluded"].get(name, "")
            lines.append(f"  {name:<{width}}" + "".join(f"{format_value(v, 3):>11}" for v in values) + f"{absent:>11}")
        hr = ex.get("hallucination_rate") or {}
        lines.append(f"  pointing game: matched (Hungarian) / named (classifier) structure, one cell of tolerance; "
                     f"hallucination rate {format_value(hr.get('overall'), 3)}")
        lines.append("  centroid: no model, a gaze at the centroid of the whole lesion (the pointing game's reference)")
        paper = ex.get("pointing_masks_matched")
        if paper and paper != pm:  # a model trained with loss.attention_matching: its matching weighs the gazes
            lines.append("  matched by the model's loss (it weighs the gazes); by the masks alone, the paper's: "
                         + ", ".join(f"{n} {format_value(v, 3)}" for n, v in paper["per_structure"].items())
                         + f", overall {format_value(paper['overall'], 3)}")
    ab = ex.get("ablation") or {}
    if ab.get("zero_by_construction"):
        lines.append("  gaze ablation: no gazes, zero effect by construction")
    elif ab:
        per_step = " ".join(format_value(v, 3) for v in ab["mean_abs_delta_per_step"])
        lines.append(f"  gaze ablation: mean |ΔP| per step {per_step}; flips at {format_value(ab['threshold'], 2)}: "
                     f"{format_value(ab['flip_fraction'], 3)}")
    for kind in ("deletion", "insertion"):
        d = ex.get(kind)
        if d:
            lines.append(f"  {kind} AUC {format_value(d['auc'], 3)} (random order {format_value(d['random_auc'], 3)})")
    st = ex.get("stability")
    if st:
        lines.append(f"  stability over 8 flips/rotations: MultiMatch position {format_value(st.get('position'), 3)}, "
                     f"shape {format_value(st.get('shape'), 3)}; "
                     f"P(melanoma) spread {format_value(st.get('p_spread'), 3)}"
                     + (f" ({st['note']})" if st.get("note") else ""))
    sec = ex.get("seconds") or {}
    if ex.get("faithfulness_images"):
        costly = sec.get("deletion_insertion", 0.0) + sec.get("stability", 0.0)
        lines.append(f"  deletion/insertion and stability on {ex['faithfulness_images']} images took {costly:.1f} s "
                     f"(all explanation measures {sec.get('total', 0.0):.1f} s)")
    return lines
