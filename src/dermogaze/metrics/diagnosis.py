"""Melanoma-vs-rest diagnosis metrics (paper §4.1, Eq. 21), and the check that refuses non-finite model outputs.

Everything here works on numpy arrays, so the definitions can be read and tested without a model:
``labels`` are ``(N,)`` ints (1 = melanoma, 0 = benign), ``probs`` the ``(N,)`` melanoma
probabilities, and an image is predicted melanoma when ``prob >= threshold``. The clinical
statistics of the same diagnosis (operating points, intervals, calibration) are in
:mod:`dermogaze.metrics.clinical`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import DermogazeError

#: Threshold on the predicted masks and on the melanoma probability.
BINARY_THRESHOLD = 0.5


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
        # here, not at the top: the commands that only apply a model (explain, predict, serve) import this module
        from sklearn.metrics import average_precision_score, roc_auc_score

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
