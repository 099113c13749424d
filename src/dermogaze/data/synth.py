"""Synthetic dermoscopy data written in exactly the ISIC 2017 layout (SPEC §2, §8).

ISIC images cannot be bundled, so the default data of the demo and of the tests is drawn here and
written the way the official zips unzip, so that the one ISIC reader (``dermogaze data prepare``)
handles both::

    ISIC-2017_<split>_Data/ISIC_<id>.jpg                        the picture (JPEG, quality 92)
    ISIC-2017_<split>_Data/ISIC_<id>_superpixels.png            SLIC0 superpixels, index = R + (G<<8) + (B<<16)
    ISIC-2017_<split>_Data/ISIC-2017_<split>_Data_metadata.csv  image_id,age_approximate,sex
    ISIC-2017_<split>_Part1_GroundTruth/ISIC_<id>_segmentation.png  lesion mask, 0/255
    ISIC-2017_<split>_Part2_GroundTruth/ISIC_<id>_features.json     {feature: [0/1 per superpixel]}
    ISIC-2017_<split>_Part3_GroundTruth.csv                     image_id,melanoma,seborrheic_keratosis (0.0/1.0)
    ISIC-2017_<split>_synth_truth.json                          extra sidecar: the drawn cues (readers ignore it)

What a picture holds
--------------------
* **Skin**: a skin tone with low-frequency texture, a mild dermoscope vignette and 0-5 hair-like
  dark strokes drawn over everything (hairs are not annotated, as in ISIC).
* **Lesion**: a radial-harmonic blob ``r(θ) = R (1 + Σ_k a_k cos(kθ + φ_k))``. Its hard outline
  ``d ≤ r(θ)`` is the Part 1 mask. Lesion colours are drawn as smooth patches inside it.
* **Structures** (ISIC Part 2 features), each drawn where it belongs; its *drawn region* is what an
  annotator would outline (ISIC annotations are area annotations):

  - ``pigment_network``: dark, irregular (warped, rotated) grid lines over a blob-shaped part of
    the lesion (40-80 % of it); region = that part of the lesion.
  - ``negative_network``: light reticular lines around darker holes over another part of the
    lesion (15-35 %, disjoint from the pigment network unless that covers over 90 % of the
    lesion); region = that part.
  - ``milia_like_cyst``: 1-3 clusters of 3-7 small bright round dots (radius ≈ 2-3.5 px at
    320×240) inside the lesion; region = the cluster discs (radius ≈ 10-16 px) ∩ lesion.
  - ``streaks``: dark radial lines (≈ 4 px wide at 320×240) crossing the lesion border over an
    angular sector (30-75°); region = the annular sector from 0.85·r(θ) to r(θ) + streak length.
    This region reaches outside the lesion mask, as streaks do (SPEC §1 makes it non-skin).

  All sizes scale with ``min(width, height) / 240``.

* **Feature labels per superpixel** (``_features.json``): superpixel ``i`` is labelled 1 for a
  feature when at least half of its pixels lie in the feature's drawn region
  (``2 · |region ∩ sp_i| ≥ |sp_i|``), else 0. So that a drawn structure never disappears from the
  annotation (small images, thin regions), a drawn structure that reaches the threshold nowhere
  labels the one superpixel with the largest covered fraction. Hence a structure is present in the
  JSON exactly when it was drawn. Superpixels are scikit-image SLIC0 (``slic_zero=True``,
  ``start_label=0``) with one segment per ``256·s²`` pixels (300 for any 4:3 picture, so
  superpixels scale with the picture like the structures do), computed on the picture before
  JPEG compression.

Generative rule of the diagnosis
--------------------------------
A latent class is drawn first: melanoma with probability ``prevalences["melanoma"]`` (default
0.25: the ISIC 2017 training set has 19 %, raised a little so that small demo splits hold enough
melanomas). Three *morphological cues* are then drawn so that the label is exactly::

    melanoma = (asymmetric + colour_variety + blue_grey_veil) >= 2        (see melanoma_rule)

* ``asymmetric``: large odd harmonics (a_1 ∈ [0.18, 0.28], a_3 ∈ [0.12, 0.2]) and an irregular
  border (a_5..a_8 ∈ [0.02, 0.05]); otherwise odd harmonics ≤ 0.03, an ellipse (a_2 ≤ 0.2) and a
  smooth border, i.e. a lesion nearly symmetric under a 180° rotation.
* ``colour_variety``: light brown + dark brown + black (+ red with probability 1/2), i.e. ≥ 3
  colours; otherwise one or two browns (a darker centre when two).
* ``blue_grey_veil``: a blue-grey patch over 25-45 % of the lesion (the only colour drawn whose
  blue channel exceeds its red one).

Melanomas draw all three cues with probability 0.55 and each pair with 0.15; benign lesions draw
no cue with probability 0.7 and each single cue with 0.1. Every cue is therefore visible at low
resolution (shape, colours) and each alone separates the classes well (a cue is present in 85 % of
melanomas and 10 % of benign lesions), while the rule itself is noise-free.
Structures depend on the latent class through risk ratios ``P(s | melanoma) / P(s | benign)``:
streaks 5, negative network 4 (melanoma-specific), pigment network 0.5, milia-like cysts 0.4
(benign), solved so that the marginal prevalence of each structure equals the requested one.
Seborrheic keratosis (a label of the CSV only, not used by dermogaze) is drawn for 16 % of the
benign lesions (ISIC 2017: 254 of 1626) and changes nothing in the picture.

Patient metadata
----------------
Every image gets a metadata row (``image_id,age_approximate,sex``, as ISIC 2017 ships): an age that
is a multiple of 5 in ``PATIENT_AGES`` = [15, 85] years and a sex, female or male, all equally
likely; each of the two is ``unknown`` with probability ``PATIENT_UNKNOWN`` = 0.05, independently.
They are drawn from a stream of their own (:func:`patient_rng`), so they change no picture,
annotation or label, and nothing in the picture or the diagnosis depends on them.

Default structure prevalences are Table 1's (pigment network 0.57, milia-like cysts 0.29) except
the two rare ones, raised from 0.063 and 0.058 to 0.10 each so that demo-sized test splits contain
some; ``prevalences`` overrides any of them.

Determinism
-----------
Image ``i`` of split ``S`` is drawn from ``np.random.default_rng(SeedSequence([seed, crc32(S), i]))``
so the same seed gives the same bytes, and a split's content does not depend on the other splits'
counts. Its patient metadata comes from ``SeedSequence([seed, crc32(S), i, crc32("patient")])``.
Ids are 7 digits, unique across splits: Training ``0000000 + i``, Validation ``1000000 + i``,
Test_v2/Test ``2000000 + i``.

Writing is atomic per split: everything is written into a hidden temporary folder inside
``out_dir`` and moved into place at the end, the Part 3 CSV (the index of the split) last, so an
interrupted run never leaves a split that looks complete. Existing split folders are replaced only
if they were written by this generator (their sidecar exists); anything else is refused. Synthetic
splits of an earlier run that the new run does not write are removed (one folder, one dataset).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from skimage.segmentation import slic
from tqdm.auto import tqdm

from ..errors import DermogazeError
from ..io import write_csv
from ..structures import DERMOSCOPIC_FEATURES
from .metadata import SEXES, UNKNOWN

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_COUNTS",
    "DEFAULT_PREVALENCES",
    "RISK_RATIOS",
    "SampleParams",
    "SynthSample",
    "conditional_prevalences",
    "encode_superpixels",
    "globule_rng",
    "image_id",
    "image_rng",
    "labels_path",
    "make_sample",
    "melanoma_rule",
    "n_superpixels",
    "patient_rng",
    "sample_params",
    "sample_patient",
    "superpixel_features",
    "superpixels_for",
    "truth_path",
    "write_synthetic_isic",
]

#: Images per official split when ``counts`` is not given.
DEFAULT_COUNTS: dict[str, int] = {"Training": 200, "Validation": 50, "Test_v2": 100}

#: Default prevalences (fraction of images): the four features (Table 1, rare ones raised to 0.10)
#: and the melanoma fraction.
DEFAULT_PREVALENCES: dict[str, float] = {
    "pigment_network": 0.57,
    "negative_network": 0.10,
    "milia_like_cyst": 0.29,
    "streaks": 0.10,
    "melanoma": 0.25,
}

#: ``P(feature | melanoma) / P(feature | benign)`` (before capping at probability 1).
RISK_RATIOS: dict[str, float] = {
    "pigment_network": 0.5,
    "negative_network": 4.0,
    "milia_like_cyst": 0.4,
    "streaks": 5.0,
}

#: Ages of the synthetic patients: multiples of 5 from the first to the last, in years.
PATIENT_AGES = (15, 85)
#: Probability that a patient's age (and, independently, sex) is recorded as unknown.
PATIENT_UNKNOWN = 0.05

#: Fraction of benign lesions labelled seborrheic keratosis (ISIC 2017 training: 254 / 1626).
SK_GIVEN_BENIGN = 0.16

#: (asymmetric, colour_variety, blue_grey_veil) combinations and their probabilities per class.
_MELANOMA_CUES = (((True, True, True), 0.55), ((True, True, False), 0.15),
                  ((True, False, True), 0.15), ((False, True, True), 0.15))
_BENIGN_CUES = (((False, False, False), 0.70), ((True, False, False), 0.10),
                ((False, True, False), 0.10), ((False, False, True), 0.10))

#: Lesion colours (RGB).
COLOURS: dict[str, tuple[int, int, int]] = {
    "light_brown": (184, 128, 88),
    "dark_brown": (112, 66, 42),
    "black": (42, 32, 32),
    "red": (176, 72, 70),
    "blue_grey": (100, 120, 162),
}

_PATIENT_STREAM = zlib.crc32(b"patient")
_GLOBULE_STREAM = zlib.crc32(b"globules")
#: Fraction of images with globules in the ISIC 2018 layout (drawn independently of the diagnosis).
GLOBULES_PREVALENCE = 0.3
#: Official split names of each layout.
LAYOUT_SPLITS: dict[str, tuple[str, ...]] = {
    "isic2017": ("Training", "Validation", "Test_v2", "Test"),
    "isic2018": ("Training", "Validation", "Test"),
}
_ID_BASE = {"Training": 0, "Validation": 1_000_000, "Test_v2": 2_000_000, "Test": 2_000_000}
_MAX_PER_SPLIT = 1_000_000
_SUPERPIXEL_AREA = 256  # pixels per SLIC0 segment at 320×240
_MIN_SUPERPIXELS = 24
_JPEG_QUALITY = 92
_MIN_SIZE = 32


def melanoma_rule(asymmetric: bool, colour_variety: bool, blue_grey_veil: bool) -> bool:
    """The diagnosis of a synthetic lesion: melanoma iff at least two of the three cues are drawn."""
    return int(bool(asymmetric)) + int(bool(colour_variety)) + int(bool(blue_grey_veil)) >= 2


@dataclass(frozen=True)
class SampleParams:
    """Everything that defines one synthetic lesion apart from fine texture.

    Geometry is relative so the same parameters render at any size: ``center`` is in fractions of
    (width, height), ``radius`` in fractions of ``min(width, height)``. Angles are in radians in
    image coordinates (x to the right, y downwards; angle 0 points right, π/2 down).
    """

    melanoma: bool
    seborrheic_keratosis: bool
    asymmetric: bool
    colour_variety: bool
    blue_grey_veil: bool
    colours: tuple[str, ...]
    pigment_network: bool
    negative_network: bool
    milia_like_cyst: bool
    streaks: bool
    center: tuple[float, float]
    radius: float
    harmonics: tuple[tuple[int, float, float], ...]  # (k, a_k, φ_k)
    streak_angle: float
    streak_span: float
    streak_length: float = 17.0 / 240.0  # how far streaks reach beyond the border, fraction of min(W, H)
    globules: bool | None = None  # ISIC 2018 layout only (None: the ISIC 2017 layout, four features)
    globule_seed: int = 0  # the globules' own generator, so that drawing them changes nothing else

    def structures(self) -> tuple[bool, ...]:
        """Presence of the four features in :data:`DERMOSCOPIC_FEATURES` order, then globules (2018 layout)."""
        names = DERMOSCOPIC_FEATURES + (("globules",) if self.globules is not None else ())
        return tuple(bool(getattr(self, name)) for name in names)

    def radius_factor(self, theta: np.ndarray) -> np.ndarray:
        """``r(θ) / R = 1 + Σ_k a_k cos(kθ + φ_k)``."""
        out = np.ones_like(theta)
        for k, a, phi in self.harmonics:
            out += a * np.cos(k * theta + phi)
        return out


@dataclass
class SynthSample:
    """One rendered lesion and its annotations.

    Shapes: ``image`` uint8 (H, W, 3); ``lesion`` bool (H, W); ``structures`` bool (4, H, W), the
    drawn regions in :data:`DERMOSCOPIC_FEATURES` order (then globules: (5, H, W) in the ISIC 2018
    layout); ``superpixels`` int32 (H, W) with values 0..n-1 (``None`` in the 2018 layout);
    ``features`` maps each feature to n ints (0/1), the ``_features.json`` content.
    """

    params: SampleParams
    image: np.ndarray
    lesion: np.ndarray
    structures: np.ndarray
    superpixels: np.ndarray | None
    features: dict[str, list[int]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def _resolve_prevalences(prevalences: Mapping[str, float] | None) -> dict[str, float]:
    prev = dict(DEFAULT_PREVALENCES)
    for key, value in (prevalences or {}).items():
        if key not in prev:
            raise DermogazeError(f"unknown prevalence {key!r}: expected some of {sorted(prev)}")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise DermogazeError(f"prevalence {key}={value!r} is not a number") from None
        if not 0.0 <= v <= 1.0:
            raise DermogazeError(f"prevalence {key}={v} must lie in [0, 1]")
        prev[key] = v
    return prev


@functools.lru_cache(maxsize=256)
def conditional_prevalences(prevalence: float, risk_ratio: float, melanoma_prevalence: float) -> tuple[float, float]:
    """Split a marginal prevalence into ``(P(s | benign), P(s | melanoma))``.

    Solves ``π·min(1, ρ·q) + (1-π)·min(1, q) = p`` for ``q = P(s | benign)`` (ρ the risk ratio,
    π the melanoma prevalence), so the marginal prevalence is exactly ``p`` while melanomas get
    ``ρ`` times the benign probability wherever that stays a probability.

    Returns:
        ``(p_benign, p_melanoma)``, both in [0, 1].
    """
    p, r, pi = float(prevalence), float(risk_ratio), float(melanoma_prevalence)

    def marginal(q: float) -> float:
        return pi * min(1.0, r * q) + (1.0 - pi) * min(1.0, q)

    lo, hi = 0.0, max(1.0, 1.0 / r) if r > 0 else 1.0
    for _ in range(80):  # marginal() is continuous and non-decreasing in q: bisection
        mid = 0.5 * (lo + hi)
        if marginal(mid) < p:
            lo = mid
        else:
            hi = mid
    q = hi
    return min(1.0, q), min(1.0, r * q)


def _choice(rng: np.random.Generator, options: tuple) -> object:
    probs = np.array([p for _, p in options])
    return options[int(rng.choice(len(options), p=probs / probs.sum()))][0]


def sample_params(rng: np.random.Generator, prevalences: Mapping[str, float] | None = None) -> SampleParams:
    """Draw the parameters of one lesion following the generative rule of the module docstring.

    Args:
        rng: the image's generator (see :func:`image_rng`).
        prevalences: overrides of :data:`DEFAULT_PREVALENCES` (features and ``"melanoma"``).

    Returns:
        The lesion's :class:`SampleParams`; ``melanoma == melanoma_rule(cues)`` always.
    """
    prev = _resolve_prevalences(prevalences)
    pi = prev["melanoma"]
    melanoma = bool(rng.random() < pi)
    asymmetric, colour_variety, veil = _choice(rng, _MELANOMA_CUES if melanoma else _BENIGN_CUES)
    sk = bool(not melanoma and rng.random() < SK_GIVEN_BENIGN)
    present = {}
    for name in DERMOSCOPIC_FEATURES:
        p_benign, p_mel = conditional_prevalences(prev[name], RISK_RATIOS[name], pi)
        present[name] = bool(rng.random() < (p_mel if melanoma else p_benign))

    if colour_variety:
        colours = ["light_brown", "dark_brown", "black"] + (["red"] if rng.random() < 0.5 else [])
        if rng.random() < 0.5:
            colours[0], colours[1] = colours[1], colours[0]
    else:
        colours = list(_choice(rng, ((("light_brown",), 0.35), (("dark_brown",), 0.15),
                                     (("light_brown", "dark_brown"), 0.5))))

    if asymmetric:
        harmonics = [(1, rng.uniform(0.18, 0.28)), (2, rng.uniform(0.0, 0.15)), (3, rng.uniform(0.12, 0.2))]
        harmonics += [(k, rng.uniform(0.02, 0.05)) for k in range(5, 9)]
    else:
        harmonics = [(1, rng.uniform(0.0, 0.03)), (2, rng.uniform(0.0, 0.2)), (3, rng.uniform(0.0, 0.03)),
                     (4, rng.uniform(0.0, 0.04))]
        harmonics += [(k, rng.uniform(0.0, 0.012)) for k in range(5, 9)]
    harm = tuple((int(k), float(a), float(rng.uniform(0, 2 * np.pi))) for k, a in harmonics)

    center = (float(0.5 + rng.uniform(-0.04, 0.04)), float(0.5 + rng.uniform(-0.04, 0.04)))
    radius = float(rng.uniform(0.2, 0.27))
    theta = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    factor = 1.0 + sum(a * np.cos(k * theta + phi) for k, a, phi in harm)
    radius = min(radius, 0.36 / float(factor.max()))  # keep lesion + streaks inside the picture
    streak_angle = float(rng.uniform(0, 2 * np.pi))
    streak_span = float(np.deg2rad(rng.uniform(30, 75)))
    streak_length = float(rng.uniform(12, 22) / 240.0)
    # Two draws that set nothing: they keep the stream position at which render() starts, which fixes
    # the picture of every (seed, split, index). Patient metadata has its own stream (patient_rng).
    rng.integers(2, 18)
    rng.integers(2)

    return SampleParams(
        melanoma=melanoma,
        seborrheic_keratosis=sk,
        asymmetric=bool(asymmetric),
        colour_variety=bool(colour_variety),
        blue_grey_veil=bool(veil),
        colours=tuple(colours),
        center=center,
        radius=radius,
        harmonics=harm,
        streak_angle=streak_angle,
        streak_span=streak_span,
        streak_length=streak_length,
        **present,
    )


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth random field of unit standard deviation with features about ``cell`` pixels wide."""
    h, w = shape
    cell = max(float(cell), 1.0)
    gh, gw = int(np.ceil(h / cell)) + 4, int(np.ceil(w / cell)) + 4
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    big = (int(round(gw * cell)), int(round(gh * cell)))
    fine = np.asarray(Image.fromarray(coarse).resize(big, Image.Resampling.BICUBIC))  # (≈gh·cell, ≈gw·cell)
    off = int(cell)
    out = fine[off:off + h, off:off + w]
    return (out - out.mean()) / (out.std() + 1e-6)


def _blend(img: np.ndarray, colour, alpha: np.ndarray) -> None:
    """In place: ``img = img·(1-α) + colour·α`` with α (H, W) and colour RGB or (H, W, 3)."""
    a = alpha[..., None]
    img *= 1.0 - a
    img += a * np.asarray(colour, dtype=np.float32)


def _region(field: np.ndarray, within: np.ndarray, fraction: float, softness: float = 0.12):
    """Threshold a smooth field so that ``fraction`` of ``within`` is inside; hard mask + soft alpha."""
    values = field[within]
    if values.size == 0:
        return np.zeros_like(within), np.zeros(within.shape, np.float32)
    thr = np.quantile(values, 1.0 - fraction)
    hard = within & (field > thr)
    soft = 1.0 / (1.0 + np.exp(-(field - thr) / softness))
    return hard, soft.astype(np.float32)


def _net_lines(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, spacing: float, width: float) -> np.ndarray:
    """Alpha (H, W) of an irregular reticular grid: warped, rotated lines ``width`` px wide."""
    angle = rng.uniform(0, np.pi / 2)
    shape = xx.shape
    warp_u = _smooth_noise(rng, shape, 1.5 * spacing) * 0.22 * spacing
    warp_v = _smooth_noise(rng, shape, 1.5 * spacing) * 0.22 * spacing
    u = xx * np.cos(angle) + yy * np.sin(angle) + warp_u + rng.uniform(0, spacing)
    v = -xx * np.sin(angle) + yy * np.cos(angle) + warp_v + rng.uniform(0, spacing)
    du = np.abs(u / spacing - np.round(u / spacing)) * spacing  # distance to the nearest line, px
    dv = np.abs(v / spacing - np.round(v / spacing)) * spacing
    dist = np.minimum(du, dv)
    return np.clip(1.0 - (dist - 0.5 * width), 0.0, 1.0).astype(np.float32)


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _stroke_alpha(shape: tuple[int, int], draw_fn, blur: float) -> np.ndarray:
    """Rasterise strokes drawn by ``draw_fn(ImageDraw)`` into a soft alpha map (H, W)."""
    h, w = shape
    canvas = Image.new("L", (w, h), 0)
    draw_fn(ImageDraw.Draw(canvas))
    if blur > 0:
        canvas = canvas.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def render(params: SampleParams, image_size: tuple[int, int], rng: np.random.Generator):
    """Draw the picture, the lesion mask and the four structure regions of one lesion.

    Args:
        params: the lesion (see :func:`sample_params`).
        image_size: ``(width, height)``.
        rng: generator for the fine texture (patch shapes, network warps, hair, noise).

    Returns:
        ``(image, lesion, structures)``: uint8 (H, W, 3), bool (H, W), bool (4, H, W).
    """
    w, h = image_size
    s = min(w, h) / 240.0  # size scale: structure sizes below are in pixels at 320×240
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # Skin: tone, low-frequency texture, erythema blotches, mild vignette.
    tone = rng.uniform(0, 1)
    skin = (1 - tone) * np.array([234, 192, 168]) + tone * np.array([196, 146, 116]) + rng.normal(0, 4, 3)
    img = np.empty((h, w, 3), np.float32)
    img[:] = skin
    img += (_smooth_noise(rng, (h, w), 40 * s) * 6.0)[..., None]
    img += (_smooth_noise(rng, (h, w), 6 * s) * 2.5)[..., None]
    img += (np.clip(_smooth_noise(rng, (h, w), 30 * s), 0, None) * 7.0)[..., None] * np.array([1.0, -0.4, -0.2])
    rho = np.hypot((xx - w / 2) / (w / 2), (yy - h / 2) / (h / 2)) / np.sqrt(2)
    img *= (1.0 - 0.35 * np.clip((rho - 0.75) / 0.25, 0, 1))[..., None]

    # Lesion blob: r(θ) = R (1 + Σ a_k cos(kθ + φ_k)).
    cx, cy = params.center[0] * w, params.center[1] * h
    big_r = params.radius * min(w, h)
    dx, dy = xx - cx, yy - cy
    theta = np.arctan2(dy, dx)
    dist = np.hypot(dx, dy)
    r_theta = big_r * params.radius_factor(theta)
    lesion = dist <= r_theta
    edge = rng.uniform(1.5, 3.0) * s if params.asymmetric else rng.uniform(2.5, 5.0) * s
    lesion_alpha = np.clip((r_theta - dist) / max(edge, 0.5) + 0.5, 0, 1).astype(np.float32)
    rel = np.clip(dist / r_theta, 0, 1)  # 0 at the centre, 1 at the border

    base = np.array(COLOURS[params.colours[0]], np.float32) * rng.uniform(0.9, 1.1)
    lesion_rgb = base[None, None, :] * (0.82 + 0.18 * rel)[..., None]  # darker centre
    _blend(img, lesion_rgb, lesion_alpha)

    # Colour patches.
    for name in params.colours[1:]:
        if name == "black":
            frac, cell, opacity, bias = rng.uniform(0.08, 0.15), 0.3 * big_r, 0.9, 0.0
        elif name == "red":
            frac, cell, opacity, bias = rng.uniform(0.15, 0.25), 0.5 * big_r, 0.6, 0.0
        else:  # a second brown: darker (or lighter) centre
            frac, cell, opacity, bias = rng.uniform(0.25, 0.5), 0.6 * big_r, 0.8, 1.5
        fld = _smooth_noise(rng, (h, w), cell) + bias * (1.0 - rel)
        _, soft = _region(fld, lesion, frac)
        _blend(img, COLOURS[name], soft * lesion_alpha * opacity)

    if params.blue_grey_veil:
        _, soft = _region(_smooth_noise(rng, (h, w), 0.6 * big_r), lesion, rng.uniform(0.25, 0.45))
        _blend(img, COLOURS["blue_grey"], soft * lesion_alpha * 0.88)

    structures = np.zeros((4, h, w), bool)
    taken = np.zeros((h, w), bool)

    if params.pigment_network:
        region, soft = _region(_smooth_noise(rng, (h, w), 0.8 * big_r), lesion, rng.uniform(0.4, 0.8))
        alpha = soft * lesion_alpha
        lines = _net_lines(rng, xx, yy, spacing=max(9.0 * s, 3.0), width=max(2.0 * s, 1.0))
        img *= (1.0 - 0.1 * alpha)[..., None]
        img *= (1.0 - 0.5 * lines * alpha)[..., None]
        structures[0] = region
        taken |= region

    if params.negative_network:
        free = lesion & ~taken
        if free.sum() < 0.1 * lesion.sum():  # pigment network covers nearly all: let them overlap
            free = lesion
        frac = min(1.0, rng.uniform(0.15, 0.35) * lesion.sum() / max(int(free.sum()), 1))
        region, soft = _region(_smooth_noise(rng, (h, w), 0.6 * big_r), free, frac)
        alpha = soft * lesion_alpha * free
        lines = _net_lines(rng, xx, yy, spacing=max(12.0 * s, 4.0), width=max(3.0 * s, 1.0))
        img *= (1.0 - 0.2 * alpha * (1 - lines))[..., None]
        _blend(img, (232, 204, 184), 0.75 * lines * alpha)
        structures[1] = region

    if params.streaks:
        half = 0.5 * params.streak_span
        length = params.streak_length * min(w, h)
        width = max(int(round(4 * s)), 2)
        n_streaks = max(int(params.streak_span * big_r / max(9.0 * s, 3.0)), 2)
        angles = params.streak_angle + np.linspace(-half, half, n_streaks)
        ang_jit = rng.uniform(-0.3, 0.3, n_streaks) * (params.streak_span / n_streaks)
        len_jit = rng.uniform(0.7, 1.0, n_streaks)

        def draw_streaks(d: ImageDraw.ImageDraw) -> None:
            for a, jit, lj in zip(angles, ang_jit, len_jit, strict=True):
                a = float(np.clip(a + jit, params.streak_angle - half, params.streak_angle + half))
                rr = big_r * float(params.radius_factor(np.array([a]))[0])
                r0, r1 = 0.85 * rr, rr + lj * length
                d.line((cx + r0 * np.cos(a), cy + r0 * np.sin(a), cx + r1 * np.cos(a), cy + r1 * np.sin(a)),
                       fill=255, width=width)

        alpha = _stroke_alpha((h, w), draw_streaks, blur=0.6 * s)
        _blend(img, (82, 50, 36), 0.88 * alpha)
        in_sector = np.abs(_wrap(theta - params.streak_angle)) <= half
        structures[3] = in_sector & (dist >= 0.85 * r_theta) & (dist <= r_theta + length)

    if params.milia_like_cyst:
        region, alpha = _dot_clusters(rng, params, xx, yy, (cx, cy), big_r, s, clusters=(1, 4), disc=(10, 16),
                                      reach=0.65, dots=(3, 8), dot=(2.0, 3.5), blur=0.5)
        _blend(img, (242, 236, 214), 0.95 * alpha)
        structures[2] = region & lesion

    if params.globules is not None:
        structures = np.concatenate([structures, _draw_globules(params, img, lesion, big_r, (cx, cy), s)[None]])

    # Hair: 0-5 dark quadratic-Bézier strokes over everything.
    n_hair = int(min(rng.poisson(1.5), 5))
    hairs = []
    for _ in range(n_hair):
        p0 = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        direction = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.3, 0.8) * w
        p2 = p0 + length * np.array([np.cos(direction), np.sin(direction)])
        p1 = 0.5 * (p0 + p2) + rng.normal(0, 0.15 * length, 2)
        t = np.linspace(0, 1, 24)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2  # (24, 2)
        hairs.append([tuple(p) for p in pts])

    if hairs:
        def draw_hairs(d: ImageDraw.ImageDraw) -> None:
            for pts in hairs:
                d.line(pts, fill=255, width=max(int(round(1.3 * s)), 1))

        _blend(img, (38, 28, 24), 0.85 * _stroke_alpha((h, w), draw_hairs, blur=0.4))

    img += rng.normal(0, 2.0, img.shape).astype(np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return image, lesion, structures


def _draw_globules(params: SampleParams, img: np.ndarray, lesion: np.ndarray, big_r: float,
                   center: tuple[float, float], s: float) -> np.ndarray:
    """Draw the globules of the ISIC 2018 layout into ``img``; return their region (bool (H, W)).

    1-2 clusters of 4-9 small dark-brown round dots (radius ≈ 1.5-3 px at 320×240) inside the
    lesion; region = the cluster discs (radius ≈ 9-14 px) ∩ lesion, as for milia-like cysts. The
    dots come from ``params.globule_seed``'s own generator: the picture is otherwise the ISIC 2017 one.
    """
    h, w = lesion.shape
    region = np.zeros((h, w), bool)
    if not params.globules:
        return region
    rng = np.random.default_rng(params.globule_seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    region, alpha = _dot_clusters(rng, params, xx, yy, center, big_r, s, clusters=(1, 3), disc=(9, 14), reach=0.6,
                                  dots=(4, 10), dot=(1.5, 3.0), blur=0.4)
    _blend(img, (70, 40, 28), 0.9 * alpha)
    return region & lesion


def _dot_clusters(
    rng: np.random.Generator, params: SampleParams, xx: np.ndarray, yy: np.ndarray, center: tuple[float, float],
    big_r: float, s: float, *, clusters: tuple[int, int], disc: tuple[float, float], reach: float,
    dots: tuple[int, int], dot: tuple[float, float], blur: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of small round dots inside the lesion (milia-like cysts, globules): region and stroke alpha.

    ``integers(*clusters)`` clusters, each a disc of radius ``uniform(*disc)·s`` whose centre lies
    in the direction of a uniform angle at most ``reach·r(θ) - radius`` from the lesion centre,
    holding ``integers(*dots)`` dots of radius ``uniform(*dot)·s`` (at least 0.8 px).

    Returns:
        ``(region, alpha)``: bool ``(H, W)`` union of the cluster discs; float ``(H, W)`` dot opacity.
    """
    cx, cy = center
    region = np.zeros(xx.shape, bool)
    points = []
    for _ in range(int(rng.integers(*clusters))):
        rc = rng.uniform(*disc) * s
        a = rng.uniform(0, 2 * np.pi)
        rr = big_r * float(params.radius_factor(np.array([a]))[0])
        d0 = rng.uniform(0, max(reach * rr - rc, 0))
        mx, my = cx + d0 * np.cos(a), cy + d0 * np.sin(a)
        region |= (xx - mx) ** 2 + (yy - my) ** 2 <= rc ** 2
        for _ in range(int(rng.integers(*dots))):
            rd = max(rng.uniform(*dot) * s, 0.8)
            ra, rdist = rng.uniform(0, 2 * np.pi), rng.uniform(0, max(rc - rd, 0))
            points.append((mx + rdist * np.cos(ra), my + rdist * np.sin(ra), rd))

    def draw_dots(d: ImageDraw.ImageDraw) -> None:
        for x, y, rd in points:
            d.ellipse((x - rd, y - rd, x + rd, y + rd), fill=255)

    return region, _stroke_alpha(xx.shape, draw_dots, blur=blur * s)


# --------------------------------------------------------------------------------------------
# Superpixels and feature labels
# --------------------------------------------------------------------------------------------


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


def make_sample(params: SampleParams, image_size: tuple[int, int] = (320, 240),
                rng: np.random.Generator | int = 0) -> SynthSample:
    """Render one lesion with its superpixels and feature labels (what one ISIC sample holds).

    Tests use it to draw a structure at a known place: build :class:`SampleParams` by hand (or
    ``dataclasses.replace`` a sampled one) and render it.

    Args:
        params: the lesion.
        image_size: ``(width, height)``.
        rng: generator (or integer seed) for the fine texture.

    Returns:
        A :class:`SynthSample`.
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    image, lesion, structures = render(params, image_size, rng)
    if params.globules is not None:  # ISIC 2018: pixel masks, no superpixels
        return SynthSample(params=params, image=image, lesion=lesion, structures=structures, superpixels=None)
    sp = superpixels_for(image)
    return SynthSample(params=params, image=image, lesion=lesion, structures=structures, superpixels=sp,
                       features=superpixel_features(sp, structures))


# --------------------------------------------------------------------------------------------
# Writing the ISIC layout
# --------------------------------------------------------------------------------------------


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``: independent of every other image."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(split.encode()), int(index)]))


def patient_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of the patient metadata of image ``index`` of ``split``: a stream apart from
    :func:`image_rng`'s, so that drawing the metadata changes no picture."""
    return np.random.default_rng(
        np.random.SeedSequence([int(seed), zlib.crc32(split.encode()), int(index), _PATIENT_STREAM])
    )


def sample_patient(rng: np.random.Generator) -> tuple[int | None, str | None]:
    """Draw a patient's ``(age, sex)`` as the module docstring describes; ``None`` is unknown.

    Args:
        rng: the image's patient generator (see :func:`patient_rng`).

    Returns:
        age in years (a multiple of 5 within :data:`PATIENT_AGES`) or ``None``; ``"female"``,
        ``"male"`` or ``None``.
    """
    first, last = PATIENT_AGES
    age: int | None = 5 * int(rng.integers(first // 5, last // 5 + 1))
    sex: str | None = SEXES[int(rng.integers(len(SEXES)))]
    if rng.random() < PATIENT_UNKNOWN:
        age = None
    if rng.random() < PATIENT_UNKNOWN:
        sex = None
    return age, sex


def image_id(split: str, index: int) -> str:
    """``ISIC_<7 digits>``, unique across splits (Training 0…, Validation 1…, Test_v2/Test 2…)."""
    return f"ISIC_{_ID_BASE[split] + index:07d}"


def truth_path(root: str | os.PathLike, split: str, layout: str = "isic2017") -> Path:
    """Path of a split's sidecar with the drawn cues (``ISIC-2017_<split>_synth_truth.json``, or
    ``ISIC2018_<split>_synth_truth.json``)."""
    return Path(root) / (f"ISIC2018_{split}_synth_truth.json" if layout == "isic2018"
                         else f"ISIC-2017_{split}_synth_truth.json")


def labels_path(root: str | os.PathLike) -> Path:
    """The diagnosis CSV (``image_id,melanoma``, every split) written beside a synthetic ISIC 2018 collection,
    for ``prepare --labels``."""
    return Path(root) / "ISIC2018_synth_labels.csv"


def _split_entries(split: str, layout: str = "isic2017") -> list[str]:
    """A split's top-level entries, in publishing order (the split's index, last; then the sidecar for 2018)."""
    if layout == "isic2018":
        return [f"ISIC2018_Task1_{split}_GroundTruth", f"ISIC2018_Task2_{split}_GroundTruth_v3",
                truth_path("", split, layout).name,
                f"ISIC2018_Task1-2_{split}_Input"]
    return [f"ISIC-2017_{split}_Data", f"ISIC-2017_{split}_Part1_GroundTruth", f"ISIC-2017_{split}_Part2_GroundTruth",
            f"ISIC-2017_{split}_synth_truth.json", f"ISIC-2017_{split}_Part3_GroundTruth.csv"]


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=_JPEG_QUALITY)
    return buf.getvalue()


def _check_args(counts: Mapping[str, int], image_size) -> tuple[dict[str, int], tuple[int, int]]:
    out = {}
    for split, n in counts.items():
        if split not in _ID_BASE:
            raise DermogazeError(f"unknown split {split!r}: expected some of Training, Validation, Test_v2 (or Test)")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= _MAX_PER_SPLIT:
            raise DermogazeError(f"count for {split} must be an integer in [0, {_MAX_PER_SPLIT}], got {n!r}")
        out[split] = int(n)
    if "Test" in out and "Test_v2" in out:
        raise DermogazeError("give either Test_v2 or Test, not both (they share the test id range)")
    try:
        w, h = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise DermogazeError(f"image_size must be (width, height), got {image_size!r}") from None
    if w < _MIN_SIZE or h < _MIN_SIZE:
        raise DermogazeError(f"image_size must be at least {_MIN_SIZE}×{_MIN_SIZE}, got {w}×{h}")
    return out, (w, h)


def _write_split_2018(tmp: Path, split: str, n: int, *, image_size: tuple[int, int], seed: int,
                      prevalences: dict[str, float], bar: tqdm) -> None:
    """One split in the ISIC 2018 Task 1-2 layout: the same lesions as :func:`_write_split`, with globules."""
    from .isic2018 import ATTRIBUTES, attribute_suffix

    data = tmp / f"ISIC2018_Task1-2_{split}_Input"
    part1 = tmp / f"ISIC2018_Task1_{split}_GroundTruth"
    part2 = tmp / f"ISIC2018_Task2_{split}_GroundTruth_v3"
    for folder in (data, part1, part2):
        folder.mkdir()
    truth = {}
    order = DERMOSCOPIC_FEATURES + ("globules",)  # the channels of SynthSample.structures
    for i in range(n):
        rng = image_rng(seed, split, i)
        params = sample_params(rng, {k: v for k, v in prevalences.items() if k != "globules"})
        grng = globule_rng(seed, split, i)
        params = dataclasses.replace(params, globules=bool(grng.random() < prevalences["globules"]),
                                     globule_seed=int(grng.integers(2**32)))
        sample = make_sample(params, image_size, rng)
        iid = image_id(split, i)
        (data / f"{iid}.jpg").write_bytes(_jpeg_bytes(sample.image))
        (part1 / f"{iid}_segmentation.png").write_bytes(_png_bytes(sample.lesion.astype(np.uint8) * 255))
        for name in ATTRIBUTES:
            mask = sample.structures[order.index(name)].astype(np.uint8) * 255
            (part2 / f"{iid}{attribute_suffix(name)}").write_bytes(_png_bytes(mask))
        truth[iid] = asdict(params)
        bar.update(1)
    _write_sidecar(tmp, split, "isic2018", seed=seed, image_size=image_size, prevalences=prevalences, truth=truth)


def _write_labels_2018(out: Path) -> None:
    """``ISIC2018_synth_labels.csv`` from the sidecars of the synthetic 2018 splits in ``out`` (removed when none)."""
    rows = []
    for split in LAYOUT_SPLITS["isic2018"]:
        path = truth_path(out, split, "isic2018")
        if path.is_file():
            rows += [(iid, int(p["melanoma"])) for iid, p in json.loads(path.read_text())["samples"].items()]
    if rows:
        write_csv(["image_id", "melanoma"], rows, labels_path(out))
    else:
        labels_path(out).unlink(missing_ok=True)


def _write_sidecar(tmp: Path, split: str, layout: str, *, seed: int, image_size: tuple[int, int],
                   prevalences: dict[str, float], truth: dict) -> None:
    """The split's sidecar (:func:`truth_path`): the generator's settings and every lesion's parameters."""
    tag = {"layout": layout} if layout != "isic2017" else {}  # the 2017 sidecar keeps its original keys
    sidecar = {"generator": "dermogaze.data.synth", "version": 1, **tag, "split": split, "seed": int(seed),
               "image_size": list(image_size), "prevalences": prevalences,
               "rule": "melanoma = asymmetric + colour_variety + blue_grey_veil >= 2", "samples": truth}
    truth_path(tmp, split, layout).write_text(json.dumps(sidecar, indent=1))


def globule_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of the globules of image ``index`` of ``split`` (ISIC 2018 layout): a stream apart
    from :func:`image_rng`'s, so that the lesion, its picture and its other structures are the 2017 ones."""
    return np.random.default_rng(
        np.random.SeedSequence([int(seed), zlib.crc32(split.encode()), int(index), _GLOBULE_STREAM])
    )


def _write_split(tmp: Path, split: str, n: int, *, image_size: tuple[int, int], seed: int,
                 prevalences: dict[str, float], bar: tqdm) -> None:
    data = tmp / f"ISIC-2017_{split}_Data"
    part1 = tmp / f"ISIC-2017_{split}_Part1_GroundTruth"
    part2 = tmp / f"ISIC-2017_{split}_Part2_GroundTruth"
    for folder in (data, part1, part2):
        folder.mkdir()
    labels, meta, truth = [], [], {}
    for i in range(n):
        rng = image_rng(seed, split, i)
        params = sample_params(rng, prevalences)
        sample = make_sample(params, image_size, rng)
        iid = image_id(split, i)
        (data / f"{iid}.jpg").write_bytes(_jpeg_bytes(sample.image))
        (data / f"{iid}_superpixels.png").write_bytes(_png_bytes(encode_superpixels(sample.superpixels)))
        (part1 / f"{iid}_segmentation.png").write_bytes(_png_bytes(sample.lesion.astype(np.uint8) * 255))
        (part2 / f"{iid}_features.json").write_text(json.dumps(sample.features))
        labels.append((iid, float(params.melanoma), float(params.seborrheic_keratosis)))
        age, sex = sample_patient(patient_rng(seed, split, i))
        meta.append((iid, UNKNOWN if age is None else age, UNKNOWN if sex is None else sex))
        record = {k: v for k, v in asdict(params).items() if k not in ("globules", "globule_seed")}  # 2018 only
        record["n_superpixels"] = int(sample.superpixels.max()) + 1
        truth[iid] = record
        bar.update(1)

    with open(data / f"ISIC-2017_{split}_Data_metadata.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image_id", "age_approximate", "sex"])
        writer.writerows(meta)
    _write_sidecar(tmp, split, "isic2017", seed=seed, image_size=image_size, prevalences=prevalences, truth=truth)
    with open(tmp / f"ISIC-2017_{split}_Part3_GroundTruth.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image_id", "melanoma", "seborrheic_keratosis"])
        writer.writerows(labels)


def _publish(tmp: Path, out_dir: Path, split: str, layout: str = "isic2017") -> None:
    """Move a finished split from ``tmp`` into ``out_dir``, replacing an older synthetic copy.

    The old index of the split (the Part 3 CSV; the 2018 Input folder) goes first and the new one
    comes last, so the split never looks complete while folders are being swapped.
    """
    entries = _split_entries(split, layout)
    index = out_dir / entries[-1]
    if index.is_dir():
        shutil.rmtree(index)
    elif index.exists():
        index.unlink()
    for name in entries:
        src, dest = tmp / name, out_dir / name
        if dest.exists():
            trash = Path(tempfile.mkdtemp(prefix=".synth-old-", dir=out_dir))
            os.replace(dest, trash / name)
            shutil.rmtree(trash)
        os.replace(src, dest)


def _remove_split(out_dir: Path, split: str, layout: str = "isic2017") -> None:
    """Delete a synthetic split, its index first and its sidecar (the mark of ownership) last."""
    entries = _split_entries(split, layout)
    for name in [entries[-1], *entries[:-2], entries[-2]]:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def write_synthetic_isic(
    out_dir: str | os.PathLike,
    *,
    counts: Mapping[str, int] | None = None,
    image_size: tuple[int, int] = (320, 240),
    seed: int = 0,
    prevalences: Mapping[str, float] | None = None,
    progress: bool = True,
    layout: str = "isic2017",
) -> Path:
    """Write a synthetic dataset in the ISIC 2017 layout (SPEC §2, §8; see the module docstring), or the 2018 one.

    With ``layout="isic2018"`` the same lesions (same seed → same pictures, cues and four
    structures) are written in the ISIC 2018 Task 1-2 layout (SPEC §2b): the Input folder, the Task 1
    lesion mask and one Task 2 pixel mask per attribute (the drawn regions), plus *globules* drawn as
    clusters of small dark dots in :data:`GLOBULES_PREVALENCE` of the images, from a stream of their
    own (:func:`globule_rng`). The diagnosis goes to ``ISIC2018_<split>_synth_labels.csv``
    (``image_id,melanoma``, for ``prepare --labels``), as Task 1-2 ships no labels. Splits are
    Training, Validation and Test (``Test_v2`` of the default counts becomes ``Test``).

    Args:
        out_dir: folder to write into (created if missing). Split entries already there are
            replaced only if this generator wrote them (their sidecar exists); synthetic splits of
            an earlier run that this run does not write are removed, so the folder holds one
            dataset. Other files are left alone.
        counts: images per official split name (``Training``, ``Validation``, ``Test_v2`` or
            ``Test``); default :data:`DEFAULT_COUNTS`. A count of 0 skips the split.
        image_size: ``(width, height)`` of every picture, at least 32×32.
        seed: the dataset seed; same seed → same bytes.
        prevalences: overrides of :data:`DEFAULT_PREVALENCES`: fractions in [0, 1] for any of the
            four features and ``"melanoma"``.
        progress: show a tqdm progress bar.
        layout: ``"isic2017"`` or ``"isic2018"``.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        DermogazeError: an unknown split or prevalence key, a bad count, size or value, or an
            existing split folder not written by this generator.
    """
    out = Path(out_dir)
    if layout not in LAYOUT_SPLITS:
        raise DermogazeError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUT_SPLITS)}")
    if counts is None and layout == "isic2018":
        counts = {("Test" if k == "Test_v2" else k): v for k, v in DEFAULT_COUNTS.items()}
    split_counts, size = _check_args(DEFAULT_COUNTS if counts is None else counts, image_size)
    unknown = [split for split in split_counts if split not in LAYOUT_SPLITS[layout]]
    if unknown:
        raise DermogazeError(
            f"unknown {layout} split {unknown[0]!r}: expected some of {', '.join(LAYOUT_SPLITS[layout])}"
        )
    prev = _resolve_prevalences(prevalences)
    if layout == "isic2018":
        prev["globules"] = GLOBULES_PREVALENCE
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DermogazeError(f"seed must be a non-negative integer, got {seed!r}")
    todo = {split: n for split, n in split_counts.items() if n > 0}
    for split in split_counts:
        if split not in todo:
            logger.info("synth: count 0 for %s, split not written", split)

    out.mkdir(parents=True, exist_ok=True)
    for split in todo:
        existing = [name for name in _split_entries(split, layout) if (out / name).exists()]
        if existing and not truth_path(out, split, layout).is_file():
            raise DermogazeError(f"{out / existing[0]} exists and was not written by dermogaze's synthetic "
                                 f"generator (no {truth_path(out, split, layout).name}); refusing to overwrite it")

    for other in LAYOUT_SPLITS:  # earlier synthetic splits that this run does not write would mix two datasets
        for split in LAYOUT_SPLITS[other]:
            if (other != layout or split not in todo) and truth_path(out, split, other).is_file():
                logger.info("synth: removing the synthetic %s split of an earlier run from %s", split, out)
                _remove_split(out, split, other)
    write = _write_split_2018 if layout == "isic2018" else _write_split

    with tqdm(total=sum(todo.values()), desc="synth", unit="img", disable=not progress) as bar:
        for split, n in todo.items():
            tmp = Path(tempfile.mkdtemp(prefix=f".synth-{split}-", dir=out))
            try:
                write(tmp, split, n, image_size=size, seed=int(seed), prevalences=prev, bar=bar)
                _publish(tmp, out, split, layout)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            logger.info("synth: wrote %d %s images (%d×%d) to %s", n, split, size[0], size[1], out)
    _write_labels_2018(out)
    return out
