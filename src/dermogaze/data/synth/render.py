"""Drawing a synthetic lesion: the picture, its lesion mask and the regions of its structures.

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
    This region reaches outside the lesion mask, as streaks do (docs/design.md §1 makes it non-skin).
  - ``globules`` (ISIC 2018 layout only): 1-2 clusters of small dark-brown dots, drawn from a
    generator of their own (:func:`_draw_globules`).

  All sizes scale with ``min(width, height) / 240``.

:func:`make_sample` adds the superpixels and their feature labels (:mod:`.superpixels`): one ISIC sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .sample import SampleParams
from .superpixels import superpixel_features, superpixels_for

#: Lesion colours (RGB).
COLOURS: dict[str, tuple[int, int, int]] = {
    "light_brown": (184, 128, 88),
    "dark_brown": (112, 66, 42),
    "black": (42, 32, 32),
    "red": (176, 72, 70),
    "blue_grey": (100, 120, 162),
}


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
# Drawing
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
# One sample
# --------------------------------------------------------------------------------------------


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
