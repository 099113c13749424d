"""Seeded train/val/test splits of a collection without official splits, stratified and grouped by lesion.

HAM10000, ISIC 2019 and ISIC 2020 hold several images of one lesion (HAM10000: 10015 images of
7470 lesions). Images of one lesion on both sides of a train/test boundary let a model be scored on
pictures of lesions it has seen, so :func:`split_ids` keeps every lesion on one side; it also keeps
the melanoma rate of each split close to the collection's, and the split is a pure function of the
ids, labels, lesions, fractions and seed (the same call gives the same split on any machine).

How: the fractions become whole folds out of ``K`` (:func:`fold_counts`; 0.8/0.1/0.1 is 8/1/1 of
10); scikit-learn's :class:`~sklearn.model_selection.StratifiedKFold` (shuffled, ``random_state =
seed``) deals the *groups* into ``K`` folds, stratified by each group's stratum; the first folds
become train, the next val, the rest test (scikit-learn gives the first folds the remainders of
the strata, so train, the largest split, takes them). A group is a lesion, or an image whose lesion is unknown.
A group's stratum is the set of labels of its images: ``melanoma``, ``other``, ``unlabelled`` (NaN:
its own stratum, so that a partly labelled collection spreads its labels evenly), or a combination
such as ``melanoma+other`` for a lesion whose images disagree. Without lesions every image is its
own group and this is exactly ``StratifiedKFold`` over the images.

Decisions where the paper is silent:

* Dealing groups, not images, makes image fractions approximate: a split's share of images can
  differ from its fraction by the spread of the lesions' image counts (the tests check HAM10000's
  shape to within one percentage point). :class:`~sklearn.model_selection.StratifiedGroupKFold`
  balances image counts more tightly but runs a Python loop over every group and fold, slow on
  collections of tens of thousands of images; the group-level fold is vectorised.
* Fractions are honoured to ``1 / K``: ``K`` is the smallest number of folds up to
  :data:`MAX_FOLDS` on which every fraction is a whole number of folds, else :data:`MAX_FOLDS` with
  the folds shared by largest remainder.
* A split with fraction 0 is empty; a collection with fewer groups than ``K`` folds is an error.
  When every stratum has fewer groups than ``K`` (a dozen images), no fold can hold each stratum:
  the groups are dealt by :class:`~sklearn.model_selection.KFold` (shuffled, same seed) instead.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from ..errors import DermogazeError

SPLITS = ("train", "val", "test")
#: The most folds :func:`fold_counts` uses (fractions are honoured to 1 %).
MAX_FOLDS = 100
MELANOMA, OTHER, UNLABELLED = "melanoma", "other", "unlabelled"


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` → ``(0.8, 0.1, 0.1)``, checked by :func:`check_fractions`."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise DermogazeError(f"split {text!r}: expected three numbers train,val,test such as 0.8,0.1,0.1") from None
    return check_fractions(values)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three finite, non-negative fractions (train, val, test) summing to 1, train above 0.

    Raises:
        DermogazeError: anything else.
    """
    values = tuple(float(f) for f in fractions)
    if (len(values) != 3 or not all(math.isfinite(f) and f >= 0 for f in values) or values[0] <= 0
            or abs(sum(values) - 1) > 1e-6):
        raise DermogazeError(f"split fractions {fractions}: expected three non-negative numbers train,val,test "
                             "summing to 1 with train above 0, such as 0.8,0.1,0.1")
    return values  # type: ignore[return-value]


def fold_counts(fractions: Sequence[float]) -> tuple[int, tuple[int, int, int]]:
    """Folds ``K`` and the folds of train, val and test (see the module docstring).

    ``(0.8, 0.1, 0.1) → (10, (8, 1, 1))``; ``(0.7, 0.15, 0.15) → (20, (14, 3, 3))``;
    ``(1/3, 1/3, 1/3) → (3, (1, 1, 1))``.
    """
    values = check_fractions(fractions)
    for k in range(1, MAX_FOLDS + 1):
        scaled = [f * k for f in values]
        if all(abs(x - round(x)) < 1e-6 for x in scaled):
            return k, tuple(round(x) for x in scaled)  # type: ignore[return-value]
    scaled = [f * MAX_FOLDS for f in values]
    counts = [math.floor(x) for x in scaled]
    by_remainder = sorted(range(3), key=lambda i: counts[i] - scaled[i])  # largest remainder first
    for i in by_remainder[: MAX_FOLDS - sum(counts)]:
        counts[i] += 1
    return MAX_FOLDS, tuple(counts)  # type: ignore[return-value]


def label_strata(labels: Sequence[float]) -> np.ndarray:
    """Per image ``melanoma`` (label 1), ``other`` (0) or ``unlabelled`` (NaN): object array ``(N,)``."""
    y = np.asarray(labels, dtype=np.float64)
    return np.where(np.isnan(y), UNLABELLED, np.where(y >= 0.5, MELANOMA, OTHER)).astype(object)


def split_ids(
    ids: Sequence[str],
    labels: Sequence[float],
    groups: Sequence[str | None] | None = None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, list[str]]:
    """Split images into train, val and test, stratified by label and grouped by lesion.

    Args:
        ids: image ids, unique.
        labels: per image 1 (melanoma), 0 or NaN (unknown).
        groups: per image its lesion id, ``None`` where unknown; ``None`` when no lesion is known.
        fractions: train, val, test (:func:`check_fractions`).
        seed: the split's seed (``random_state`` of the fold).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each in the order of ``ids``; every id in
        exactly one of them, every group in exactly one of them.

    Raises:
        DermogazeError: repeated ids, lengths that disagree, bad fractions, fewer groups than folds.
    """
    ids = list(ids)
    n = len(ids)
    strata = label_strata(labels)
    if strata.shape != (n,) or (groups is not None and len(groups) != n):
        raise DermogazeError(f"split: {n} ids but {len(strata)} labels and {n if groups is None else len(groups)} "
                             "groups")
    if len(set(ids)) != n:
        raise DermogazeError("split: image ids repeat")
    k, (n_train, n_val, _) = fold_counts(fractions)

    # Group of each image: its lesion, or the image itself.
    keys = [("image", i) if groups is None or groups[j] is None else ("lesion", groups[j]) for j, i in enumerate(ids)]
    index: dict[tuple[str, str], int] = {}
    group_of = np.array([index.setdefault(key, len(index)) for key in keys], dtype=np.int64)  # (N,)
    n_groups = len(index)
    members: list[set[str]] = [set() for _ in range(n_groups)]
    for g, s in zip(group_of, strata, strict=True):
        members[g].add(s)
    group_strata = np.array(["+".join(sorted(m)) for m in members], dtype=object)  # (G,)

    fold_of_group = np.zeros(n_groups, dtype=np.int64)  # K == 1: fractions (1, 0, 0), all train
    if k > 1:
        what = "lesions and images without a lesion id" if groups is not None else "images"
        if n_groups < k:
            shares = ",".join(f"{f:g}" for f in fractions)
            raise DermogazeError(f"{n_groups} {what} are too few to divide into train, val and test in the fractions "
                                 f"{shares}: that takes at least {k}; add images, or give fractions such as 1,0,0 "
                                 "(every image in train)")
        _, per_stratum = np.unique(group_strata, return_counts=True)
        stratify = per_stratum.max() >= k
        folds = (StratifiedKFold if stratify else KFold)(n_splits=k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # a stratum rarer than K groups lands in fewer folds: expected, not a fault
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            for f, (_, held) in enumerate(folds.split(np.zeros(n_groups), group_strata)):
                fold_of_group[held] = f
    fold = fold_of_group[group_of]  # (N,)
    name = np.where(fold < n_train, "train", np.where(fold < n_train + n_val, "val", "test"))  # (N,)
    return {split: [i for i, s in zip(ids, name, strict=True) if s == split] for split in SPLITS}
