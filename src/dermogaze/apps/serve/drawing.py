"""The viewer's pictures: the gaze path, each gaze's attention, its mask and the ground truth over the image.

No model work: everything is drawn from an :class:`~.session.Analysis`, for every gaze at the first
render. Pictures are at the display size (:data:`~.session.DISPLAY_SIDE`, longest side); the
network input region, the attention and the masks are mapped onto them (:func:`_region_box`,
:func:`_to_display`). The attention colour scale is shared by all gazes of the image (as in
``explain``'s figure): a diffuse gaze looks faint, a focused one bright.
"""

import functools

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ...evaluation.plots import CORRECT_COLOR, STRUCTURE_COLORS, WRONG_COLOR
from .session import Analysis

_HEAT = (matplotlib.colormaps["inferno"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)  # (256, 3)
_PATH_COLORS = matplotlib.colormaps["viridis"]


def _hex(color: str) -> tuple[int, int, int]:
    return tuple(int(round(255 * c)) for c in matplotlib.colors.to_rgb(color))


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font (no font file needed), loaded once per size."""
    return ImageFont.load_default(size=size)


def _region_box(analysis: Analysis) -> tuple[int, int, int, int]:
    """The network input region in display pixels ``(x0, y0, x1, y1)``, edges (x1, y1 exclusive)."""
    top, left, bottom, right = analysis.explanation.region
    h, w = analysis.display.shape[:2]
    x0, y0 = round(left * w), round(top * h)
    return x0, y0, max(x0 + 1, round(right * w)), max(y0 + 1, round(bottom * h))


def _to_display(analysis: Analysis, x: int, y: int) -> tuple[float, float]:
    """A pixel of the original image → the centre of its spot in the display copy."""
    h0, w0 = analysis.image_hw
    h, w = analysis.display.shape[:2]
    return (x + 0.5) * w / w0 - 0.5, (y + 0.5) * h / h0 - 0.5


#: Opacities (0-255) of the overlays, by the value of the map drawn (0-255): attention, mask fill, mask outline.
_ATTENTION_ALPHA = [round(0.85 * v) for v in range(256)]
_FILL_ALPHA = [v // 2 for v in range(256)]
_AT_LEAST_HALF = [255 if v >= 128 else 0 for v in range(256)]
_ANY = [255 if v else 0 for v in range(256)]


def _map_image(field: np.ndarray, size: tuple[int, int], scale: float = 1.0) -> Image.Image:
    """A map with values in [0, scale] as an 8-bit image, resized (bilinear) to ``size = (width, height)``."""
    values = np.clip(np.asarray(field, dtype=np.float32) * (255.0 / scale) + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(values).resize(size, Image.Resampling.BILINEAR)


def _mask_overlay(base: Image.Image, box: tuple[int, int, int, int], mask: np.ndarray, color: str) -> None:
    """Fill ``mask`` (probabilities over the region) in ``color`` (opacity ~ probability), outline it at 0.5."""
    x0, y0, x1, y1 = box
    m = _map_image(mask, (x1 - x0, y1 - y0))
    fill = Image.new("RGB", m.size, _hex(color))
    base.paste(fill, (x0, y0), m.point(_FILL_ALPHA))
    edge = m.point(_AT_LEAST_HALF).filter(ImageFilter.FIND_EDGES)  # the inner border, one pixel
    edge = edge.filter(ImageFilter.BoxBlur(1)).point(_ANY)  # widened to three
    base.paste(fill, (x0, y0), edge)


def _disc(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, color: tuple[int, int, int],
          radius: float, ring: bool = False) -> None:
    x, y = xy
    if ring:
        draw.ellipse((x - radius - 5, y - radius - 5, x + radius + 5, y + radius + 5), outline=(255, 255, 0), width=3)
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color, outline=(255, 255, 255), width=2)
    draw.text((x, y), text, fill=(255, 255, 255), font=_font(int(radius * 1.1)), anchor="mm")


def _step_colors(analysis: Analysis) -> list[tuple[int, int, int]]:
    """Green/red by the correctness of the named structure when known; else an ordered palette."""
    steps = analysis.record["steps"]
    n = len(steps)
    colors = []
    for k, s in enumerate(steps):
        ok = s.get("structure_correct")
        if ok is None:
            colors.append(tuple(int(255 * c) for c in _PATH_COLORS(0.05 + 0.8 * k / max(n - 1, 1))[:3]))
        else:
            colors.append(_hex(CORRECT_COLOR if ok else WRONG_COLOR))
    return colors


def render_path(analysis: Analysis, current: int | None = None) -> np.ndarray:
    """The image with the numbered gaze path (arrows in step order); gaze ``current`` (1-based) ringed.

    Returns:
        ``(h, w, 3)`` uint8 at the display size.
    """
    canvas = Image.fromarray(analysis.display.copy())
    draw = ImageDraw.Draw(canvas)
    if tuple(analysis.explanation.region) != (0.0, 0.0, 1.0, 1.0):  # the part the network saw
        x0, y0, x1, y1 = _region_box(analysis)
        for k in range(x0, x1, 8):
            draw.line((k, y0, min(k + 4, x1), y0), fill="white")
            draw.line((k, y1 - 1, min(k + 4, x1), y1 - 1), fill="white")
        for k in range(y0, y1, 8):
            draw.line((x0, k, x0, min(k + 4, y1)), fill="white")
            draw.line((x1 - 1, k, x1 - 1, min(k + 4, y1)), fill="white")
    steps = analysis.record["steps"]
    if not analysis.has_gazes:
        return np.asarray(canvas)
    points = [_to_display(analysis, s["gaze"]["x"], s["gaze"]["y"]) for s in steps]
    radius = max(9.0, analysis.display.shape[1] / 34)
    for (xa, ya), (xb, yb) in zip(points[:-1], points[1:], strict=True):
        length = float(np.hypot(xb - xa, yb - ya))
        if length <= 2 * radius:
            continue
        ux, uy = (xb - xa) / length, (yb - ya) / length
        start = (xa + ux * radius, ya + uy * radius)
        end = (xb - ux * radius, yb - uy * radius)
        draw.line((*start, *end), fill=(255, 255, 255), width=3)
        head = radius * 0.8
        left = (end[0] - ux * head - uy * head * 0.5, end[1] - uy * head + ux * head * 0.5)
        right = (end[0] - ux * head + uy * head * 0.5, end[1] - uy * head - ux * head * 0.5)
        draw.polygon([end, left, right], fill=(255, 255, 255))
    colors = _step_colors(analysis)
    groups: dict[tuple[int, int], list[int]] = {}  # gazes on the same pixel share one disc, "2,4"
    for k, s in enumerate(steps):
        groups.setdefault((s["gaze"]["x"], s["gaze"]["y"]), []).append(k)
    for members in groups.values():
        label = ",".join(str(k + 1) for k in members)
        ring = current is not None and current - 1 in members
        _disc(draw, points[members[0]], label, colors[members[0]], radius * (1 + 0.3 * (len(members) - 1)), ring)
    return np.asarray(canvas)


def render_step(analysis: Analysis, t: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Gaze ``t`` (1-based): its attention over the image, its decoded mask, and the matched ground-truth mask.

    Returns:
        ``(attention, mask, gt)`` display-size uint8 images; ``mask`` is None without a decoder,
        ``gt`` None when the step's ground-truth structure is not known.
    """
    expl = analysis.explanation
    step = analysis.record["steps"][t - 1]
    box = _region_box(analysis)
    x0, y0, x1, y1 = box
    xy = _to_display(analysis, step["gaze"]["x"], step["gaze"]["y"])
    radius = max(9.0, analysis.display.shape[1] / 34)

    base = Image.fromarray(analysis.display)
    att = base.copy()
    a = _map_image(expl.attention[t - 1], (x1 - x0, y1 - y0), float(expl.attention.max()) or 1.0)
    att.paste(Image.fromarray(_HEAT[np.asarray(a)]), (x0, y0), a.point(_ATTENTION_ALPHA))
    _disc(ImageDraw.Draw(att), xy, str(t), _step_colors(analysis)[t - 1], radius)

    mask = None
    if expl.masks is not None:
        mask = base.copy()
        k = expl.structures.index(step["structure"]) if step["structure"] in expl.structures else 0
        _mask_overlay(mask, box, expl.masks[t - 1], STRUCTURE_COLORS[k % len(STRUCTURE_COLORS)])
    gt = None
    if expl.gt_masks is not None and step.get("gt_structure") in expl.structures:
        gt = base.copy()
        k = expl.structures.index(step["gt_structure"])
        _mask_overlay(gt, box, expl.gt_masks[k].astype(np.float32), STRUCTURE_COLORS[k % len(STRUCTURE_COLORS)])
    return tuple(None if im is None else np.asarray(im) for im in (att, mask, gt))
