"""The parameters of a synthetic lesion: its diagnosis, cues and structures, and the random streams.

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

Default structure prevalences are Table 1's (pigment network 0.57, milia-like cysts 0.29) except
the two rare ones, raised from 0.063 and 0.058 to 0.10 each so that demo-sized test splits contain
some; ``prevalences`` overrides any of them.

Patient metadata
----------------
Every image gets a metadata row (``image_id,age_approximate,sex``, as ISIC 2017 ships): an age that
is a multiple of 5 in ``PATIENT_AGES`` = [15, 85] years and a sex, female or male, all equally
likely; each of the two is ``unknown`` with probability ``PATIENT_UNKNOWN`` = 0.05, independently.
They are drawn from a stream of their own (:func:`patient_rng`), so they change no picture,
annotation or label, and nothing in the picture or the diagnosis depends on them.

Determinism
-----------
Image ``i`` of split ``S`` is drawn from ``np.random.default_rng(SeedSequence([seed, crc32(S), i]))``
(:func:`image_rng`: its parameters, then its fine texture) so the same seed gives the same bytes,
and a split's content does not depend on the other splits' counts. Its patient metadata comes from
``SeedSequence([seed, crc32(S), i, crc32("patient")])`` and, in the ISIC 2018 layout, its globules
from ``SeedSequence([seed, crc32(S), i, crc32("globules")])``.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ...errors import DermogazeError
from ...structures import DERMOSCOPIC_FEATURES
from ..metadata import SEXES

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

_PATIENT_STREAM = zlib.crc32(b"patient")
_GLOBULE_STREAM = zlib.crc32(b"globules")
#: Fraction of images with globules in the ISIC 2018 layout (drawn independently of the diagnosis).
GLOBULES_PREVALENCE = 0.3


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


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def resolve_prevalences(prevalences: Mapping[str, float] | None) -> dict[str, float]:
    """:data:`DEFAULT_PREVALENCES` with ``prevalences`` applied, each checked to be a fraction in [0, 1].

    Raises:
        DermogazeError: an unknown key, or a value that is not a number in [0, 1].
    """
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
    prev = resolve_prevalences(prevalences)
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
# Random streams and patients
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


def globule_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of the globules of image ``index`` of ``split`` (ISIC 2018 layout): a stream apart
    from :func:`image_rng`'s, so that the lesion, its picture and its other structures are the 2017 ones."""
    return np.random.default_rng(
        np.random.SeedSequence([int(seed), zlib.crc32(split.encode()), int(index), _GLOBULE_STREAM])
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
