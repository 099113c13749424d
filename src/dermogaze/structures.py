"""The six structures of dermogaze (SPEC §1) and the presence-based weights of Eqs. 15-16 (Table 2).

Index → name is fixed everywhere: masks are stacked in this order, structure logits use it and
checkpoints record it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STRUCTURES: tuple[str, ...] = (
    "lesion",
    "skin",
    "pigment_network",
    "negative_network",
    "milia_like_cyst",
    "streaks",
)
NUM_STRUCTURES = len(STRUCTURES)

#: The four ISIC 2017 Part 2 features, as the keys of ``ISIC_<id>_features.json``.
DERMOSCOPIC_FEATURES: tuple[str, ...] = STRUCTURES[2:]

#: Short labels for figures and tables.
SHORT_NAMES: tuple[str, ...] = ("lesion", "skin", "pig.net", "neg.net", "milia", "streaks")

#: Presence of each structure in the ISIC 2017 training images (paper, Table 1).
PAPER_PRESENCES: tuple[int, ...] = (2000, 2000, 1131, 126, 573, 116)


def presence_weights(presences: Sequence[float], kind: str) -> np.ndarray:
    """Per-structure weights from the number of training images holding each structure.

    ``kind="w"`` is Eq. 15 normalised to sum to one, ``w_i = Σ_{s≠i} P_s / ((S-1) Σ_s P_s)``;
    ``kind="w'"`` (or ``"w_prime"``) is Eq. 16, ``w'_i = 1 / (P_i Σ_s 1/P_s)``. With the paper's
    Table 1 presences both reproduce Table 2.

    Args:
        presences: ``P_s`` for every structure, in :data:`STRUCTURES` order.
        kind: ``"w"`` or ``"w'"``.

    Returns:
        float64 array of shape ``(S,)`` summing to one.

    Raises:
        ValueError: for an unknown kind, or (for ``w'``) a structure that is never present.
    """
    p = np.asarray(presences, dtype=np.float64)
    if p.ndim != 1 or p.size < 2:
        raise ValueError(f"presences must be a 1-D sequence of at least two counts, got {presences!r}")
    if kind == "w":
        return (p.sum() - p) / ((p.size - 1) * p.sum())
    if kind in ("w'", "w_prime"):
        if np.any(p <= 0):
            absent = [STRUCTURES[i] if p.size == NUM_STRUCTURES else str(i) for i in np.flatnonzero(p <= 0)]
            raise ValueError(f"w' weights need every structure present at least once; never present: {absent}")
        return 1.0 / (p * np.sum(1.0 / p))
    raise ValueError(f"unknown weighting {kind!r}: expected 'w' or \"w'\"")
