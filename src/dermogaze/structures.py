"""The structure sets of dermogaze (docs/design.md §1, §2b) and the presence-based weights of Eqs. 15-16 (Table 2).

The set of structures is a property of the prepared data, not of the code: a cache records it in
``info["structures"]`` and every checkpoint in ``ckpt["structures"]``. Index → name is fixed within a
set: masks are stacked in its order and structure logits use it. Two sets are known:

=========  ====================================================================================
ISIC 2017  lesion, skin, pigment_network, negative_network, milia_like_cyst, streaks (the default)
ISIC 2018  lesion, skin, pigment_network, negative_network, streaks, milia_like_cyst, globules
=========  ====================================================================================

The first two are always ``lesion`` and ``skin`` (Eqs. 18-19); the rest are the dermoscopic
structures of the data, in the order its annotations list them (:func:`dermoscopic`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ISIC2017_STRUCTURES: tuple[str, ...] = (
    "lesion",
    "skin",
    "pigment_network",
    "negative_network",
    "milia_like_cyst",
    "streaks",
)
ISIC2018_STRUCTURES: tuple[str, ...] = (
    "lesion",
    "skin",
    "pigment_network",
    "negative_network",
    "streaks",
    "milia_like_cyst",
    "globules",
)

#: Named structure sets (the ``layout`` of a collection → its structures).
STRUCTURE_SETS: dict[str, tuple[str, ...]] = {"isic2017": ISIC2017_STRUCTURES, "isic2018": ISIC2018_STRUCTURES}

#: The default set (ISIC 2017, the paper's). New code takes the set of its data instead.
STRUCTURES: tuple[str, ...] = ISIC2017_STRUCTURES
NUM_STRUCTURES = len(STRUCTURES)

#: The four ISIC 2017 Part 2 features, as the keys of ``ISIC_<id>_features.json``.
DERMOSCOPIC_FEATURES: tuple[str, ...] = ISIC2017_STRUCTURES[2:]

#: Short label of every known structure, for figures and tables.
SHORT_NAME: dict[str, str] = {
    "lesion": "lesion",
    "skin": "skin",
    "pigment_network": "pig.net",
    "negative_network": "neg.net",
    "milia_like_cyst": "milia",
    "streaks": "streaks",
    "globules": "globules",
}

#: Short labels of the default set, in its order.
SHORT_NAMES: tuple[str, ...] = tuple(SHORT_NAME[s] for s in STRUCTURES)

#: Presence of each structure in the ISIC 2017 training images (paper, Table 1).
PAPER_PRESENCES: tuple[int, ...] = (2000, 2000, 1131, 126, 573, 116)


def short_names(structures: Sequence[str]) -> list[str]:
    """Short labels of ``structures`` (an unknown name is cut to 8 characters)."""
    return [SHORT_NAME.get(s, s[:8]) for s in structures]


def dermoscopic(structures: Sequence[str]) -> tuple[str, ...]:
    """The dermoscopic structures of a set: every structure but ``lesion`` and ``skin``, in order."""
    return tuple(s for s in structures if s not in ("lesion", "skin"))


def check_structures(structures: Sequence[str], source: str) -> tuple[str, ...]:
    """A structure set read from a file, checked: ``lesion``, ``skin``, then distinct names.

    Raises:
        ValueError: naming ``source``, for a list that is not a structure set.
    """
    names = tuple(structures) if isinstance(structures, (list, tuple)) else ()
    if (len(names) < 3 or names[:2] != ("lesion", "skin") or len(set(names)) != len(names)
            or not all(isinstance(n, str) and n for n in names)):
        raise ValueError(f"{source}: {structures!r} is not a structure set (lesion, skin, then distinct names)")
    return names


def presence_weights(presences: Sequence[float], kind: str, names: Sequence[str] | None = None) -> np.ndarray:
    """Per-structure weights from the number of training images holding each structure.

    ``kind="w"`` is Eq. 15 normalised to sum to one, ``w_i = Σ_{s≠i} P_s / ((S-1) Σ_s P_s)``;
    ``kind="w'"`` (or ``"w_prime"``) is Eq. 16, ``w'_i = 1 / (P_i Σ_s 1/P_s)``. With the paper's
    Table 1 presences both reproduce Table 2.

    Args:
        presences: ``P_s`` for every structure of a set, in its order.
        kind: ``"w"`` or ``"w'"``.
        names: the structures the counts belong to (they name the absent ones in the error).

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
            absent = [names[i] if names is not None else str(i) for i in np.flatnonzero(p <= 0)]
            raise ValueError(f"w' weights need every structure present at least once; never present: {absent}")
        return 1.0 / (p * np.sum(1.0 / p))
    raise ValueError(f"unknown weighting {kind!r}: expected 'w' or \"w'\"")
