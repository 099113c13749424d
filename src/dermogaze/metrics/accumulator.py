"""One evaluation pass, batch by batch, into every docs/design.md §6 metric (:class:`EvaluationAccumulator`).

It turns the model's tensors into numpy arrays and hands each image to the functions of
:mod:`dermogaze.metrics.diagnosis` and :mod:`dermogaze.metrics.structures`.

What :meth:`EvaluationAccumulator.compute` returns (``NaN`` where a metric is undefined, written
as ``null`` by :func:`dermogaze.files.write_json`)::

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
        "jaccard_best_step": {structure: float},  # the best single step's IoU, whatever it names (mean over
                                                # the images holding the structure): segmentation apart from naming
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
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..models.output import GazeOutput
from ..runtime import to_numpy
from ..structures import DERMOSCOPIC_FEATURES, ISIC2018_STRUCTURES, STRUCTURES, dermoscopic
from .diagnosis import BINARY_THRESHOLD, diagnosis_metrics
from .structures import (
    IOU_THRESHOLDS,
    classification_accuracy,
    confusion_matrix,
    named_masks,
    pair_with_ground_truth,
    per_structure_jaccard,
    precision_at_thresholds,
    structure_iou_matrix,
    structure_pixel_scores,
    superpixel_auc,
    superpixel_means,
    task2_confusion,
    task2_jaccard,
)


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
    """Collects one evaluation pass batch by batch and computes every docs/design.md §6 metric at the end.

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
        self._best_step: list[np.ndarray] = []
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
        probs = to_numpy(out.calibrated_melanoma_prob(self.temperature))  # (B,)
        self.margins.extend(float(m) for m in to_numpy(out.melanoma_margin))
        if tta_margins is not None:
            views = to_numpy(torch.sigmoid(tta_margins / self.temperature)).astype(np.float64)  # (V, B)
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
        labels = to_numpy(batch.get("label"))
        if labels is None:
            self.labels.extend([None] * b)
        else:
            self.labels.extend(int(v) if v >= 0 else None for v in labels.reshape(-1))

        if out.masks is None or out.structure_logits is None or "present" not in batch:
            return
        self._has_decoder = True
        masks = to_numpy(out.masks)  # (B, T, H, W)
        struct_probs = _softmax(to_numpy(out.structure_logits))  # (B, T, S)
        pred_classes = struct_probs.argmax(-1)  # (B, T)
        gt = to_numpy(batch["masks"]) > 0.5  # (B, S, H, W)
        present = to_numpy(batch["present"]).astype(bool)  # (B, S)
        sp = to_numpy(batch.get("superpixels"))
        for i in range(b):
            if present[i].any():
                iou_aware, _ = structure_iou_matrix(gt[i], present[i], masks[i], pred_classes[i])
                iou_agn, rows = structure_iou_matrix(gt[i], present[i], masks[i], None)
                self._prec_aware.append(precision_at_thresholds(iou_aware, self.thresholds))
                self._prec_agnostic.append(precision_at_thresholds(iou_agn, self.thresholds))
                self._pair_gt.append(pair_with_ground_truth(gt[i], present[i], masks[i]))
                self._pair_pred.append(pred_classes[i])
                self._jaccard.append(per_structure_jaccard(gt[i], present[i], masks[i], pred_classes[i]))
                best = np.full(len(self.structures), np.nan)
                best[rows] = iou_agn.max(axis=1)
                self._best_step.append(best)
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
                         "_prec_agnostic", "_pair_gt", "_pair_pred", "_jaccard", "_best_step", "_sp_scores",
                         "_sp_labels", "_task2"):
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
        """Every metric of docs/design.md §6 (see the module docstring for the keys); NaN where undefined."""
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
                "jaccard_best_step": {s: math.nan for s in self.structures},
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
        best = np.stack(self._best_step)  # (N, S), NaN where absent
        best_mean = [float(np.nanmean(best[:, s])) if jac_n[s] else math.nan for s in range(n)]
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
            "jaccard_best_step": dict(zip(self.structures, best_mean, strict=True)),
            "jaccard_lesion_skin": _nanmean(lesion_skin),
            "jaccard_mean": _nanmean(jac_mean),
        }
