"""Superpixels of a synthetic picture and the per-superpixel feature labels (ISIC 2017 Part 2).

Superpixels are scikit-image SLIC0 (``slic_zero=True``, ``start_label=0``) with one segment per
``256·s²`` pixels, ``s = min(width, height) / 240`` (300 for any 4:3 picture, so superpixels scale
with the picture like the structures do), computed on the picture before JPEG compression, and
written with the official RGB encoding ``index = R + (G<<8) + (B<<16)``.

Feature labels per superpixel (``_features.json``): superpixel ``i`` is labelled 1 for a feature
when at least half of its pixels lie in the feature's drawn region (``2 · |region ∩ sp_i| ≥ |sp_i|``),
else 0. So that a drawn structure never disappears from the annotation (small images, thin
regions), a drawn structure that reaches the threshold nowhere labels the one superpixel with the
largest covered fraction. Hence a structure is present in the JSON exactly when it was drawn.
"""

from __future__ import annotations

import numpy as np
from skimage.segmentation import slic

from ...structures import DERMOSCOPIC_FEATURES

_SUPERPIXEL_AREA = 256  # pixels per SLIC0 segment at 320×240
_MIN_SUPERPIXELS = 24


def n_superpixels(image_size: tuple[int, int]) -> int:
    """Number of SLIC0 segments asked for: one per ``256·s²`` pixels, ``s = min(W, H) / 240``.

    That is 300 for any 4:3 picture (320×240, 128×96, ...): like every drawn structure, superpixels
    scale with the picture, so the annotation of a lesion does not depend on the resolution it is
    drawn at (ISIC 2017 likewise has about a thousand superpixels whatever the image size).
    """
    w, h = image_size
    scale = min(w, h) / 240.0
    return max(_MIN_SUPERPIXELS, int(round(w * h / (_SUPERPIXEL_AREA * scale * scale))))


def superpixels_for(image: np.ndarray) -> np.ndarray:
    """SLIC0 superpixels of an RGB picture, relabelled to consecutive indices 0..n-1.

    Shape: image uint8 (H, W, 3) → int32 (H, W).
    """
    h, w = image.shape[:2]
    labels = slic(image, n_segments=n_superpixels((w, h)), slic_zero=True, start_label=0, channel_axis=-1)
    _, inverse = np.unique(labels, return_inverse=True)  # guarantee 0..n-1 without gaps
    return inverse.reshape(h, w).astype(np.int32)


def encode_superpixels(index_map: np.ndarray) -> np.ndarray:
    """The official ISIC 2017 RGB encoding: ``R = i & 255``, ``G = (i >> 8) & 255``, ``B = (i >> 16) & 255``.

    Shape: (H, W) integer → uint8 (H, W, 3).
    """
    idx = np.asarray(index_map, dtype=np.uint32)
    if idx.size and int(idx.max()) >= 1 << 24:
        raise ValueError("superpixel index does not fit 24 bits")
    return np.stack([idx & 255, (idx >> 8) & 255, (idx >> 16) & 255], axis=-1).astype(np.uint8)


def superpixel_features(superpixels: np.ndarray, structures: np.ndarray) -> dict[str, list[int]]:
    """Per-superpixel 0/1 labels of the four features (the ``_features.json`` content).

    Rule: superpixel ``i`` gets 1 for a feature when at least half of its pixels lie in the
    feature's region (``2·covered ≥ size``); a feature whose region is non-empty but reaches that
    threshold nowhere labels the single superpixel with the largest covered fraction (ties: the
    lowest index), so that a drawn structure is always annotated.

    Args:
        superpixels: int (H, W), values 0..n-1.
        structures: bool (4, H, W), regions in :data:`DERMOSCOPIC_FEATURES` order.

    Returns:
        ``{feature: [n ints]}``.
    """
    flat = superpixels.ravel()
    n = int(flat.max()) + 1
    size = np.bincount(flat, minlength=n)
    out = {}
    for name, region in zip(DERMOSCOPIC_FEATURES, structures, strict=True):
        covered = np.bincount(flat, weights=region.ravel().astype(np.float64), minlength=n)
        label = 2 * covered >= size
        label &= covered > 0
        if region.any() and not label.any():
            label[int(np.argmax(covered / np.maximum(size, 1)))] = True
        out[name] = [int(v) for v in label]
    return out
