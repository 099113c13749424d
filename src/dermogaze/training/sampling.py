"""Repeat-factor sampling of the training images (LVIS, Gupta et al., CVPR 2019): rare structures seen more often.

Beyond the paper, off by default (``train.repeat_threshold = 0``: every image once per epoch, shuffled).
With a threshold ``t > 0`` each structure ``c`` gets the repeat factor ``r_c = max(1, sqrt(t / f_c))``, ``f_c``
the fraction of training images that hold it, and each image the largest factor of its structures,
``r(I) = max(1, max_{c ∈ I} r_c)``. An epoch draws every image ``floor(r(I))`` times plus once more with
probability ``r(I) − floor(r(I))`` (LVIS's stochastic rounding), shuffles the draws and keeps the first
``N`` (the number of training images), so an epoch lasts as long as without it: images with rare
structures replace some of the common ones rather than lengthening the epoch. The loss balancing
(``loss.balancing``) reweighs the structures *within* the images of a batch; this changes *which*
images are in it, so the lesion and skin, present in every image, keep their full weight.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def repeat_factors(present: np.ndarray, threshold: float) -> np.ndarray:
    """``r(I) = max(1, max_{c ∈ I} sqrt(t / f_c))`` of every image, float64 ``(N,)``.

    Args:
        present: bool ``(N, K)``, image ``i`` holds structure ``k``.
        threshold: ``t`` (> 0); a structure in a fraction ``f_c >= t`` of the images is not repeated.
    """
    present = np.asarray(present, dtype=bool)
    if threshold <= 0:
        raise ValueError(f"repeat_factors: threshold must be > 0, got {threshold}")
    fraction = present.mean(axis=0)  # (K,) f_c
    per_structure = np.sqrt(threshold / np.where(fraction > 0, fraction, np.inf))  # (K,), 0 for an absent one
    per_image = np.where(present, per_structure[None, :], 0.0).max(axis=1, initial=0.0)  # (N,)
    return np.maximum(1.0, per_image)


class RepeatFactorSampler(Sampler[int]):
    """Indices of one epoch drawn by repeat factor, sharded over the ranks like ``DistributedSampler``.

    The ``k``-th draw of image ``i`` (``k`` from 0) in an epoch is yielded as ``i + k·N``:
    :class:`~dermogaze.training.seeding.EpochSeededDataset` loads image ``i`` with an augmentation seeded by
    that number, so the repeats of an image differ. The draws of epoch ``e`` are a function of ``(seed, e)``
    alone (:meth:`set_epoch`), so every rank draws the same list and a resumed run the same epochs. The
    ``N`` kept draws are padded (from their start) to a multiple of ``num_replicas``, and rank ``r`` takes
    every ``num_replicas``-th from ``r``.

    Args:
        factors: ``r(I)`` of every image (:func:`repeat_factors`), all >= 1.
        num_replicas, rank: the world size and this process's rank.
        seed: the run's seed.
    """

    def __init__(self, factors: np.ndarray, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        self.factors = torch.as_tensor(np.asarray(factors, dtype=np.float64))
        if self.factors.ndim != 1 or len(self.factors) == 0 or bool((self.factors < 1).any()):
            raise ValueError("RepeatFactorSampler: factors must be a non-empty 1-D array of values >= 1")
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = int(seed)
        self.epoch = 0
        self.num_samples = math.ceil(len(self.factors) / num_replicas)  # per rank

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self) -> torch.Tensor:
        """The ``N`` draws of the current epoch (``i + k·N``), before padding and sharding ``(N,)``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        whole = self.factors.floor()
        repeats = whole + (torch.rand(len(self.factors), generator=g, dtype=torch.float64) < self.factors - whole)
        n = len(self.factors)
        draws = torch.repeat_interleave(torch.arange(n), repeats.long())  # (Σ repeats,) image of each draw
        first = torch.cumsum(repeats.long(), 0) - repeats.long()  # position of each image's first draw
        draws = draws + n * (torch.arange(len(draws)) - first[draws])  # i + k·N for the k-th draw of image i
        return draws[torch.randperm(len(draws), generator=g)][:n]

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices()
        total = self.num_samples * self.num_replicas
        if total > len(indices):  # pad from the start, as DistributedSampler does
            indices = indices.repeat(math.ceil(total / len(indices)))[:total]
        return iter(indices[self.rank : total : self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples
