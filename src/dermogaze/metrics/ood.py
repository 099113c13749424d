"""Out-of-distribution score: the Mahalanobis distance of an image's pooled encoder features to the training split's.

A model says how unlike its training images an image is, so that a diagnosis of an image it has never seen
the like of (a photograph for a model trained on synthetic images, a clinical picture for a dermoscopy model)
is flagged rather than trusted::

    f(x) = GAP(X'(x)) ∈ R^C                         the encoder output X' (C × h × w), averaged over its h·w cells
    μ    = (1/N) Σ_i f(x_i)                          over the N images of the training split
    Σ    = (1 - δ) S + δ (tr S / C) I  +  ε (tr S / C) I
                                                    S the sample covariance, δ the Ledoit-Wolf shrinkage
                                                    (sklearn.covariance.LedoitWolf), ε = RIDGE
    d(x) = sqrt((f(x) - μ)ᵀ Σ⁻¹ (f(x) - μ))          the Mahalanobis distance
    τ    = the q-quantile of d over the validation split (q = QUANTILE = 0.95, numpy's linear interpolation)
    out of distribution  ⇔  d(x) > τ

Decisions:

* **The features** are the encoder's (VGG blocks 1-3, ``X'``, C = 256 · width channels), the representation every
  variant shares and the attention reads, pooled over the grid; they are taken in float32 from the eval-mode
  network (no augmentation: the center crop the dataset applies at evaluation).
* **Shrinkage**: with a few hundred training images and C up to 256 the sample covariance is singular or
  ill-conditioned; Ledoit-Wolf's shrinkage towards a multiple of the identity makes it invertible with a
  data-chosen strength. ``ε`` adds 10⁻⁶ of the mean variance, so that the float32 copy stored in the checkpoint
  stays positive definite.
* **Stored** (:meth:`FeatureDistribution.to_state`, a checkpoint's ``ood`` field): μ and Σ as float32 tensors,
  τ, q and the image counts. τ is computed with the stored float32 Σ, so the distances at inference are those the
  threshold was chosen on. Σ⁻¹ is never stored: the distance solves with Σ's Cholesky factor (float64).
* By construction about 5% of in-distribution images exceed τ: the flag is a warning, not a proof.

The fit on a model and a prepared cache (and on an existing checkpoint) is :mod:`dermogaze.training.ood`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from scipy.linalg import solve_triangular
from torch import Tensor

from ..errors import DermogazeError

#: The validation quantile of the distance that is the threshold τ.
QUANTILE = 0.95
#: ``ε``: the fraction of the mean variance added to Σ's diagonal.
RIDGE = 1e-6
#: What the features are (stored with the distribution, checked when it is read).
FEATURES = "GAP(X')"


def pooled_features(x_prime: Tensor) -> Tensor:
    """``f(x) = GAP(X')``: the encoder output averaged over its grid, in float32.

    Shape:
        ``(B, C, h, w)`` → ``(B, C)``.
    """
    return x_prime.float().mean(dim=(-2, -1))  # (B, C)


@dataclass(frozen=True)
class FeatureDistribution:
    """The training split's feature distribution and the validation threshold (the module docstring's μ, Σ, τ).

    Build it with :meth:`fit` or :meth:`from_state`.

    Attributes:
        mean: float32 ``(C,)``; covariance: float32 ``(C, C)``, symmetric positive definite.
        threshold: τ; quantile: q.
        n_train, n_val: the images μ, Σ and τ were computed from.
    """

    mean: Tensor
    covariance: Tensor
    threshold: float
    quantile: float = QUANTILE
    n_train: int = 0
    n_val: int = 0

    @property
    def channels(self) -> int:
        """``C``, the feature dimension."""
        return int(self.mean.shape[0])

    @functools.cached_property
    def _cholesky(self) -> np.ndarray:
        """Lower Cholesky factor ``L`` of Σ in float64 (``Σ = L Lᵀ``)."""
        return np.linalg.cholesky(self.covariance.double().numpy())

    def distance(self, features: Tensor | np.ndarray) -> np.ndarray:
        """``d(x)`` of each row of ``features``: ``‖L⁻¹ (f - μ)‖``, which is ``sqrt((f - μ)ᵀ Σ⁻¹ (f - μ))``.

        Shape:
            ``(B, C)`` → float64 ``(B,)``.
        """
        f = features.detach().double().cpu().numpy() if isinstance(features, Tensor) else np.asarray(features, float)
        diff = f.reshape(-1, self.channels) - self.mean.double().numpy()  # (B, C)
        z = solve_triangular(self._cholesky, diff.T, lower=True)  # (C, B): L z = f - μ
        return np.sqrt(np.sum(z * z, axis=0))  # (B,)

    def score(self, features: Tensor | np.ndarray) -> list[dict[str, Any]]:
        """Per row of ``features`` ``(B, C)``: ``{"distance", "threshold", "out_of_distribution"}`` (the explain
        record's ``ood``)."""
        tau = float(self.threshold)
        return [{"distance": float(d), "threshold": tau, "out_of_distribution": bool(d > tau)}
                for d in self.distance(features)]

    @classmethod
    def fit(
        cls, train: Tensor | np.ndarray, val: Tensor | np.ndarray, quantile: float = QUANTILE
    ) -> FeatureDistribution:
        """μ and Σ of the training features, τ the ``quantile`` of the validation features' distances.

        Args:
            train: ``(N, C)`` training-split features (N ≥ 2); val: ``(M, C)`` validation-split features (M ≥ 1).
            quantile: q, in (0, 1).

        Raises:
            DermogazeError: too few images, non-finite features, or features that do not vary over the training
                split (no distribution to measure against).
        """
        train, val = (np.asarray(x.detach().cpu().double() if isinstance(x, Tensor) else x, dtype=np.float64)
                      for x in (train, val))
        if train.ndim != 2 or train.shape[0] < 2:
            raise DermogazeError(f"the out-of-distribution score needs at least 2 training images, got {len(train)}")
        if val.ndim != 2 or val.shape[0] < 1 or val.shape[1] != train.shape[1]:
            raise DermogazeError(f"the out-of-distribution threshold needs validation features of {train.shape[1]} "
                                 f"channels, got shape {val.shape}")
        if not (np.isfinite(train).all() and np.isfinite(val).all()):
            raise DermogazeError("the encoder features hold NaN or infinite values: no out-of-distribution score")
        if not 0.0 < quantile < 1.0:
            raise DermogazeError(f"the threshold's quantile must be in (0, 1), got {quantile}")
        from sklearn.covariance import LedoitWolf  # here: scoring an image (explain, predict, serve) never needs it

        covariance = LedoitWolf(store_precision=False).fit(train).covariance_  # (C, C)
        scale = float(np.trace(covariance)) / covariance.shape[0]  # tr S / C (the shrinkage keeps the trace)
        if not scale > 0:
            raise DermogazeError("the encoder features do not vary over the training split: no out-of-distribution "
                                 "score")
        covariance = covariance + RIDGE * scale * np.eye(covariance.shape[0])
        fitted = cls(mean=torch.from_numpy(train.mean(axis=0)).float(),
                     covariance=torch.from_numpy((covariance + covariance.T) / 2).float(), threshold=0.0,
                     quantile=float(quantile), n_train=int(train.shape[0]), n_val=int(val.shape[0]))
        return replace(fitted, threshold=float(np.quantile(fitted.distance(val), quantile)))

    def to_state(self) -> dict[str, Any]:
        """The checkpoint's ``ood`` field: tensors and plain numbers (a weights-only load reads it)."""
        return {"features": FEATURES, "mean": self.mean.detach().cpu().float().clone(),
                "covariance": self.covariance.detach().cpu().float().clone(), "threshold": float(self.threshold),
                "quantile": float(self.quantile), "n_train": int(self.n_train), "n_val": int(self.n_val)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> FeatureDistribution:
        """The distribution of a checkpoint's ``ood`` field (checked by :func:`check_state` when it was loaded)."""
        return cls(mean=state["mean"].float(), covariance=state["covariance"].float(),
                   threshold=float(state["threshold"]), quantile=float(state["quantile"]),
                   n_train=int(state["n_train"]), n_val=int(state["n_val"]))


def check_state(state: Any, channels: int) -> str | None:
    """What is wrong with a checkpoint's ``ood`` field for an encoder of ``channels`` channels (None: nothing)."""
    keys = {"features", "mean", "covariance", "threshold", "quantile", "n_train", "n_val"}
    if not isinstance(state, dict) or set(state) != keys:
        return f"must be a mapping of {', '.join(sorted(keys))} (or empty)"
    if state["features"] != FEATURES:
        return f"features must be {FEATURES!r}, got {state['features']!r}"
    mean, cov = state["mean"], state["covariance"]
    if not isinstance(mean, Tensor) or tuple(mean.shape) != (channels,) or not mean.is_floating_point():
        return f"mean must be a floating tensor of shape ({channels},) (the encoder's channels)"
    if not isinstance(cov, Tensor) or tuple(cov.shape) != (channels, channels) or not cov.is_floating_point():
        return f"covariance must be a floating tensor of shape ({channels}, {channels})"
    if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(cov).all())):
        return "mean and covariance must be finite"
    c = cov.double()
    if not torch.allclose(c, c.T, rtol=1e-5, atol=1e-8 * float(c.diagonal().abs().max())) or bool(
            torch.linalg.cholesky_ex(c).info):
        return "covariance must be symmetric positive definite"
    threshold, quantile = state["threshold"], state["quantile"]
    if not _number(threshold) or threshold < 0:
        return f"threshold must be a finite number >= 0, got {threshold!r}"
    if not _number(quantile) or not 0 < quantile < 1:
        return f"quantile must be in (0, 1), got {quantile!r}"
    for key, low in (("n_train", 2), ("n_val", 1)):
        n = state[key]
        if isinstance(n, bool) or not isinstance(n, int) or n < low:
            return f"{key} must be an integer of at least {low}, got {n!r}"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def ood_note(score: Mapping[str, Any] | None, quantile: float = QUANTILE) -> str | None:
    """One line for an image flagged out of distribution (None when it is not, or there is no score)."""
    if not score or not score.get("out_of_distribution"):
        return None
    return (f"out of distribution: this image's encoder features are farther from the training images' than those of "
            f"{quantile:.0%} of the validation images (distance {score['distance']:.2f} > threshold "
            f"{score['threshold']:.2f}); the diagnosis may not hold for it")
