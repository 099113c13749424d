"""The gaze viewer in the browser (``dermogaze serve``): one image's diagnosis, gaze by gaze.

A Gradio app over one trained checkpoint. The page, top to bottom:

* **Input**: upload a JPEG/PNG, or (with ``--data CACHE``) pick an image of a prepared split from
  a gallery; the ground truth of those is known.
* **Diagnosis**: P(melanoma) after the checkpoint's temperature scaling, the decision at its
  threshold (both fitted on the validation split, ``ckpt["calibration"]``) and, when known, the
  ground truth.
* **Gazes**: the numbered gaze path over the image and a step control ``t = 1..T``: gaze ``t``'s
  attention ``A_t`` over the image (Eq. 2), its decoded mask ``M_t`` and the structure it names
  (arg-max of ``softmax(pred_t)``), with the matched ground-truth structure and its mask when
  known and the step's explanation metrics where the record has them; a table of all steps.
* **Intervention** (gaze ablation, SPEC §6b): untick gazes and the diagnosis is recomputed
  without them by :meth:`~dermogaze.models.GazeNet.diagnose` from the network state kept at the
  first pass (no new encoder or ConvLSTM pass); ΔP is shown. The table also lists the ΔP of
  removing each gaze alone.
* **Download**: the JSON record and the figures of ``dermogaze explain`` for the current image
  (:func:`dermogaze.explain.save_explanation`).

How the work is split, so that only the first render pays for the network:

* The checkpoint is loaded once per process (:class:`Viewer`); each browser tab keeps its current
  image's :class:`Analysis` in its own ``gr.State``.
* The first render is one forward pass (:func:`dermogaze.explain.explain_image` over
  :meth:`GazeNet.forward_with_state <dermogaze.models.GazeNet.forward_with_state>`, through
  :class:`_KeepState`), one batched diagnosis for the per-gaze ablation, and drawing.
* Every gaze's views (path with that gaze ringed, attention, mask, ground truth, its text) are
  drawn at the first render (~7 ms a gaze) and sent with it as HTML panels, one per gaze,
  pictures inlined as JPEG data URLs (:func:`gazes_html`, :func:`path_html`). A step change is
  then no request at all: the slider's change event runs a line of JavaScript in the browser that
  shows gaze ``t``'s panels and hides the others (:data:`_SHOW_STEP_JS`); a server round trip
  alone costs Gradio more than the issue's 50 ms. An intervention runs the diagnosis branch alone
  on the kept state. Network work is queued one request at a time (``concurrency_id="model"``:
  two cores are used by one forward pass already); interventions bypass Gradio's queue
  (``queue=False``: a plain HTTP request, no wait behind an upload and less overhead per request).

Decisions where the issue is silent:

* Uploads go through a file field, not an image field, so that every byte is read by the
  project's own reader (:func:`dermogaze.data.images.load_user_image`: pixel budget, one mode
  conversion), and a bad file gets that reader's message in the page.
* Refused (a message in the page, nothing analysed): unreadable files, decompression bombs (the
  pixel budget), images whose shorter side is below :data:`MIN_IMAGE_SIDE`, and grayscale images
  (the diagnosis depends on colour, which they lack). Analysed with a warning: images with
  transparency (composited on white by the reader).
* The attention colour scale is shared by all gazes of the image (as in ``explain``'s figure): a
  diffuse gaze looks faint, a focused one bright.
* Offline: ``GRADIO_ANALYTICS_ENABLED=False`` is set before Gradio is imported (Gradio is imported
  only by :func:`build_app`, so the rest of dermogaze runs without it) and
  ``analytics_enabled=False`` given to the page; the default theme's fonts ship with Gradio; no
  share link, no run history, no monitoring endpoint; bound to 127.0.0.1 unless told otherwise.
"""

import base64
import contextlib
import functools
import hashlib
import html
import io
import os
import re
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from torch import Tensor, nn

from .config import Config
from .data.cache import load_info, load_split
from .data.images import load_user_image, normalise
from .data.transforms import center_crop_slices
from .errors import DataError, DermogazeError
from .explain import Explanation, cache_region, explain_image, safe_name, save_explanation
from .io import atomic_write
from .models import GazeNet, GazeState
from .plots import CORRECT_COLOR, STRUCTURE_COLORS, WRONG_COLOR
from .runtime import resolve_device
from .training.checkpoint import load_checkpoint, model_from_checkpoint

#: Shorter side, in pixels, below which an upload is refused: the smallest network input (five VGG pools).
MIN_IMAGE_SIDE = 32
#: Longest side of the pictures drawn in the page (the image is shown at this size whatever its own).
DISPLAY_SIDE = 384
#: Images of a split shown in the gallery (the first ones, in the cache's order).
GALLERY_SIZE = 48
#: Default address: this machine only.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
#: Seconds a drawn picture's file is kept (Gradio copies it into its own cache when the request ends).
PICTURE_LIFETIME_S = 600

_HEAT = (matplotlib.colormaps["inferno"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)  # (256, 3)
_PATH_COLORS = matplotlib.colormaps["viridis"]


# ----------------------------------------------------------------------------------------------
# Analysis of one image (the model's part)
# ----------------------------------------------------------------------------------------------


@dataclass
class Analysis:
    """One analysed image: what a tab keeps between its requests.

    Attributes:
        explanation: :func:`~dermogaze.explain.explain_image` output (record and arrays).
        state: the network state the diagnosis is recomputed from (:meth:`GazeNet.diagnose`).
        display: ``(h, w, 3)`` uint8, the image at :data:`DISPLAY_SIDE` (longest side).
        ablation: ``(T,)`` P(melanoma) without each gaze alone, or None (a variant without gazes).
        notes: warnings about the input shown with the result (e.g. transparency).
    """

    explanation: Explanation
    state: GazeState
    display: np.ndarray
    ablation: np.ndarray | None
    notes: tuple[str, ...] = ()

    @property
    def record(self) -> dict[str, Any]:
        return self.explanation.record

    @property
    def steps(self) -> int:
        return int(self.record["n_steps"])

    @property
    def has_gazes(self) -> bool:
        return self.explanation.attention is not None


class _KeepState(nn.Module):
    """``net`` whose forward returns the :class:`GazeOutput` and keeps the :class:`GazeState` beside it.

    Lets :func:`~dermogaze.explain.explain_image` (which calls ``model(images)``) run the one forward
    pass whose state the interventions reuse. One instance per request.
    """

    def __init__(self, net: GazeNet):
        super().__init__()
        self.net = net
        self.state: GazeState | None = None

    def forward(self, images: Tensor):
        out, self.state = self.net.forward_with_state(images)
        return out


def _expand_state(state: GazeState, batch: int) -> GazeState:
    """The one-image state repeated ``batch`` times (views, no copies)."""

    def rep(x: Tensor | None) -> Tensor | None:
        return None if x is None else x.expand(batch, *x.shape[1:])

    return GazeState(x_prime=rep(state.x_prime), last_attended=rep(state.last_attended), pooled=rep(state.pooled))


class _Pictures:
    """The page's pictures as JPEG files for Gradio to serve (quality 90, no chroma subsampling).

    Gradio's own encoders (PNG, WebP) take tens of milliseconds per picture; JPEG takes well under
    one. Files are named by their content (the same picture is one file) and removed
    :data:`PICTURE_LIFETIME_S` seconds after they were written (Gradio serves its own copy by then).
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self._written = 0
        self._lock = threading.Lock()

    def __call__(self, array: np.ndarray | None) -> str | None:
        if array is None:
            return None
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="jpeg", quality=90, subsampling=0)
        data = buffer.getvalue()
        path = self.folder / f"{hashlib.sha1(data).hexdigest()}.jpg"
        if not path.exists():
            with atomic_write(path, "wb", fsync=False) as fh:  # transient: never read half-written, not kept
                fh.write(data)
        with self._lock:
            self._written += 1
            prune = self._written % 256 == 0
        if prune:
            cutoff = time.time() - PICTURE_LIFETIME_S
            for old in self.folder.glob("*.jpg"):
                with contextlib.suppress(OSError):
                    if old.stat().st_mtime < cutoff:
                        old.unlink()
        return str(path)


def _display_copy(image: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """The image resized (bilinear) so that its longest side is ``side``."""
    h, w = image.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0))


class Viewer:
    """A checkpoint loaded once, and the images it analyses (the page's model side, without Gradio).

    Args:
        checkpoint: ``RUN/best.pt``.
        data: a prepared cache whose splits the gallery offers (their ground truth is shown), or None.
        device: ``cpu``, ``cuda`` or ``auto``.

    Raises:
        DermogazeError / DataError: unreadable checkpoint or cache.
    """

    def __init__(self, checkpoint: str | Path, data: str | Path | None = None, *, device: str = "auto"):
        self.checkpoint = Path(checkpoint)
        ckpt = load_checkpoint(self.checkpoint)
        self.device = resolve_device(device)
        self.model = model_from_checkpoint(ckpt).to(self.device).eval()
        self.image_size = int(ckpt["image_size"])
        self.mean, self.std = list(ckpt["mean"]), list(ckpt["std"])
        self.structures = tuple(ckpt["structures"])
        self.threshold = float(ckpt["calibration"]["threshold"])
        self.temperature = float(ckpt["calibration"]["temperature"])
        self.threshold_rule = str(ckpt["calibration"].get("threshold_rule", ""))
        self.variant = str(ckpt["variant"])
        self.loss = Config.from_dict(ckpt["config"], source=f"{self.checkpoint} config").loss  # its matching
        self.data = Path(data) if data is not None else None
        self.info = load_info(self.data) if self.data is not None else None
        if self.info is not None and tuple(self.info["structures"]) != self.structures:
            raise DataError(
                f"cache {self.data} holds the structures {', '.join(self.info['structures'])}, the checkpoint "
                f"{self.checkpoint} names {', '.join(self.structures)}: give the cache the model was trained on"
            )
        self._splits: dict[str, Any] = {}
        self._splits_lock = threading.Lock()
        self._work = tempfile.TemporaryDirectory(prefix="dermogaze-serve-")  # removed with the viewer
        (Path(self._work.name) / "pictures").mkdir()
        self.pictures = _Pictures(Path(self._work.name) / "pictures")

    @property
    def steps(self) -> int:
        """``T``: the number of gazes of the model."""
        return int(self.model.steps) if self.model.attention is not None else 0

    @property
    def splits(self) -> list[str]:
        """Splits of the cache, ``test`` first when there is one."""
        if self.info is None:
            return []
        names = list(self.info["splits"])
        return sorted(names, key=lambda s: s != "test")

    def split(self, name: str):
        """The arrays of a split of the cache (read once, memory-mapped by :func:`load_split`)."""
        if self.data is None:
            raise DermogazeError("no prepared data: start the viewer with --data CACHE to pick images of a split")
        with self._splits_lock:
            if name not in self._splits:
                if name not in self.splits:
                    raise DataError(f"cache {self.data} has no split {name!r} (it holds {', '.join(self.splits)})")
                self._splits[name] = load_split(self.data, name)
            return self._splits[name]

    # -- the network ---------------------------------------------------------------------------

    @torch.no_grad()
    def _analyse(self, tensor: Tensor, original: np.ndarray, notes: Sequence[str] = (), **explain: Any) -> Analysis:
        keeper = _KeepState(self.model)
        expl = explain_image(
            keeper, tensor, original, structures=self.structures, threshold=self.threshold,
            temperature=self.temperature, model_source=str(self.checkpoint), loss=self.loss, **explain,
        )
        state = keeper.state
        ablation = None
        t_steps = int(expl.record["n_steps"])
        if expl.attention is not None and t_steps > 0:
            keep = ~torch.eye(t_steps, dtype=torch.bool)  # (T, T): row t removes gaze t alone
            probs = self.model.diagnose(_expand_state(state, t_steps), keep, temperature=self.temperature)  # (T,)
            ablation = probs.float().cpu().numpy()
        return Analysis(explanation=expl, state=state, display=_display_copy(expl.image), ablation=ablation,
                        notes=tuple(notes))

    def analyse_file(self, path: str | Path) -> Analysis:
        """Analyse a user's image file (refusing what the module docstring lists).

        Raises:
            DataError: the file is unreadable, over the pixel budget, too small or grayscale (names it).
        """
        path = Path(path)
        tensor, original = load_user_image(path, self.image_size, self.mean, self.std)
        height, width = original.shape[:2]
        if min(height, width) < MIN_IMAGE_SIDE:
            raise DataError(
                f"{path.name}: the image is {width}×{height} pixels; a dermoscopic image of at least "
                f"{MIN_IMAGE_SIDE}×{MIN_IMAGE_SIDE} pixels is needed"
            )
        step = max(1, max(height, width) // 512)
        sample = original[::step, ::step]  # (≤ 1024, ≤ 1024, 3) view: enough to tell colour from grey
        if (sample[..., 0] == sample[..., 1]).all() and (sample[..., 1] == sample[..., 2]).all():
            raise DataError(
                f"{path.name}: the image is grayscale; the diagnosis depends on colour: give the colour dermoscopic "
                "image"
            )
        notes = []
        with Image.open(path) as im:  # the header only; the reader above has accepted the file
            if im.has_transparency_data:
                notes.append(
                    f"{path.name} has transparent parts: they were composited on white before the analysis, so the "
                    "result describes the image as shown on a white page"
                )
        return self._analyse(tensor, original, notes, image_id=path.stem, image_path=path.name)

    def analyse_cached(self, split: str, index: int) -> Analysis:
        """Analyse image ``index`` of a split of the cache, with its ground truth (as ``dermogaze explain --data``)."""
        arrays = self.split(split)
        if not 0 <= index < len(arrays):
            raise DataError(f"split {split} of {self.data} has {len(arrays)} images, not an image number {index}")
        cache_size = int(self.info["size"])
        rows, cols = center_crop_slices(cache_size, self.image_size)  # the crop the dataset applies
        image = np.asarray(arrays.images[index])  # (C, C, 3) cache image
        gt = present = None
        if arrays.masks is not None:
            gt = np.asarray(arrays.masks[index][:, rows, cols]) > 0  # (K, S, S)
            present = gt.reshape(gt.shape[0], -1).any(axis=1)
        return self._analyse(
            normalise(image[rows, cols], self.mean, self.std), image, image_id=arrays.ids[index],
            image_path=f"{self.data}:{split}", region=cache_region(cache_size, self.image_size), gt_masks=gt,
            present=present, label=int(arrays.labels[index]),
        )

    @torch.no_grad()
    def intervene(self, analysis: Analysis, keep: Sequence[int]) -> float:
        """P(melanoma) with only the gazes ``keep`` (1-based step numbers), from the kept network state."""
        mask = torch.zeros(analysis.steps, dtype=torch.bool)
        mask[[int(t) - 1 for t in keep]] = True
        return float(self.model.diagnose(analysis.state, mask, temperature=self.temperature)[0])

    def gallery(self, split: str) -> list[tuple[str, str]]:
        """``(picture file, caption)`` of the first :data:`GALLERY_SIZE` images of a split."""
        arrays = self.split(split)
        names = {0: "benign", 1: "melanoma"}
        return [(self.pictures(np.asarray(arrays.images[k])), f"{names[int(arrays.labels[k])]} · {arrays.ids[k]}")
                for k in range(min(GALLERY_SIZE, len(arrays)))]

    def save_files(self, analysis: Analysis) -> list[Path]:
        """Write the JSON record and figures of ``dermogaze explain`` for the image into a fresh folder."""
        out = Path(tempfile.mkdtemp(dir=self._work.name))
        expl = replace(analysis.explanation, record=dict(analysis.record))  # the tab's record stays as it was
        files = save_explanation(expl, out, safe_name(analysis.record["image_id"]))
        return list(files.values())


# ----------------------------------------------------------------------------------------------
# Drawing (no model work: done for every gaze at the first render)
# ----------------------------------------------------------------------------------------------


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
    h0, w0 = analysis.explanation.image.shape[:2]
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


# ----------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------


def structure_label(name: str | None) -> str:
    """``pigment_network`` → ``pigment network``, ``milia_like_cyst`` → ``milia-like cyst``; None → an em dash."""
    return "—" if name is None else str(name).replace("_like_", "-like ").replace("_", " ")


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def diagnosis_html(analysis: Analysis, rule: str = "") -> str:
    """The diagnosis box: P(melanoma), the decision at the threshold, and the ground truth when known."""
    rec = analysis.record
    p, threshold, decision = rec["melanoma_probability"], rec["threshold"], rec["prediction"]
    how = f", rule {rule}" if rule else ""
    lines = [
        f'<div class="dg-prob">P(melanoma) = <b id="dg-probability">{p:.3f}</b></div>',
        f'<div class="dg-decision">Decision: <b>{decision}</b> '
        f"<span class='dg-small'>(melanoma when P ≥ {threshold:.3f}; threshold chosen on the validation "
        f"images{how})</span></div>",
    ]
    gt = rec.get("ground_truth")
    if gt:
        verdict = "the decision is right ✓" if gt["prediction_correct"] else "the decision is wrong ✗"
        lines.append(f'<div class="dg-gt">Ground truth: <b>{gt["diagnosis"]}</b> — {verdict}</div>')
    else:
        lines.append('<div class="dg-gt dg-small">Ground truth: not known for an uploaded image</div>')
    lines.append(f'<div class="dg-small">Image: {html.escape(rec["image_id"])} ({rec["image_size"]["width"]}×'
                 f'{rec["image_size"]["height"]} px)</div>')
    return f'<div class="dg-diagnosis dg-{decision}">' + "".join(lines) + "</div>"


def step_markdown(analysis: Analysis, t: int) -> str:
    """What gaze ``t`` (1-based) found, as a short list, with its metrics where the record has them."""
    step = analysis.record["steps"][t - 1]
    lines = [f"**Gaze {t} of {analysis.steps}** looked at pixel (x {step['gaze']['x']}, y {step['gaze']['y']}), "
             f"{step['attention_vs_uniform']:.1f}× as hard as a uniform look."]
    if step["structure"] is not None:
        lines.append(f"- It names **{structure_label(step['structure'])}** (probability "
                     f"{step['structure_probability']:.2f}) and outlines {step['mask_area_fraction']:.0%} of what the "
                     "network sees.")
    if step.get("gt_structure") is not None:
        mark = "✓ the same" if step["structure_correct"] else "✗ another structure"
        lines.append(f"- Ground truth there: **{structure_label(step['gt_structure'])}** ({mark}).")
    metrics = []
    if step.get("pointing_hit") is not None:  # on the loss's matched structure, which may differ from the one above
        where = "inside" if step["pointing_hit"] else "outside"
        metrics.append(f"pointing game **{'hit' if step['pointing_hit'] else 'miss'}** on its matched structure, "
                       f"**{structure_label(step['matched_structure'])}** (the attention peak lies {where} that "
                       "structure's ground-truth mask)")
    if step.get("relevance_mass") is not None:
        metrics.append(f"relevance mass **{step['relevance_mass']:.2f}** (the share of the attention inside it)")
    if metrics:
        lines.append("- " + "; ".join(metrics).capitalize() + ".")
    if analysis.ablation is not None:
        delta = analysis.ablation[t - 1] - analysis.record["melanoma_probability"]
        lines.append(f"- Without this gaze alone, P(melanoma) would be {analysis.ablation[t - 1]:.3f} "
                     f"(ΔP {delta:+.3f}).")
    return "\n".join(lines)


def _inline_html(markdown: str) -> str:
    """The little markdown of :func:`step_markdown` (``**bold**``, ``- `` items) as HTML, text escaped."""
    bold = lambda line: re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(line, quote=False))  # noqa: E731
    lines = markdown.splitlines()
    head = [f"<p>{bold(x)}</p>" for x in lines if not x.startswith("- ")]
    items = [f"<li>{bold(x[2:])}</li>" for x in lines if x.startswith("- ")]
    return "".join(head) + (f"<ul>{''.join(items)}</ul>" if items else "")


def _data_url(array: np.ndarray) -> str:
    """A picture as an inline JPEG (quality 90, no chroma subsampling): no file, no request to fetch it."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="jpeg", quality=90, subsampling=0)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(array: np.ndarray, caption: str, cls: str) -> str:
    return (f'<figure class="dg-fig {cls}"><figcaption>{html.escape(caption)}</figcaption>'
            f'<img src="{_data_url(array)}" alt="{html.escape(caption)}"></figure>')


def _panel(t: int, body: str) -> str:
    """Panel of gaze ``t``: shown for t = 1, hidden otherwise (the slider's JavaScript switches them)."""
    hidden = "" if t == 1 else " hidden"
    return f'<div class="dg-panel" data-dg-step="{t}"{hidden}>{body}</div>'


def path_html(analysis: Analysis) -> str:
    """The gaze path, one picture per gaze (that gaze ringed), of which the current gaze's is shown."""
    if not analysis.has_gazes or analysis.steps == 0:
        return _figure(render_path(analysis), "The image (this model has no gazes)", "dg-path")
    return "".join(_panel(t, _figure(render_path(analysis, t), f"Gaze path (numbered in order; gaze {t} ringed)",
                                     "dg-path")) for t in range(1, analysis.steps + 1))


def gazes_html(analysis: Analysis) -> str:
    """All ``T`` gazes' panels (text with the step's metrics, attention, mask, ground truth), gaze 1 shown."""
    if not analysis.has_gazes:
        return ""
    panels = []
    for t in range(1, analysis.steps + 1):
        att, mask, gt = render_step(analysis, t)
        figures = [_figure(att, "Where it looked (attention)", "dg-attention")]
        if mask is not None:
            figures.append(_figure(mask, "What it outlined (its mask)", "dg-mask"))
        if gt is not None:
            figures.append(_figure(gt, "Ground truth mask", "dg-gt"))
        panels.append(_panel(t, f'<div class="dg-step-text">{_inline_html(step_markdown(analysis, t))}</div>'
                                f'<div class="dg-figs">{"".join(figures)}</div>'))
    return "".join(panels)


#: The step slider's change event, run in the browser: show the panels of gaze ``t``, hide the others.
_SHOW_STEP_JS = """(t) => {
  const s = String(Math.round(t));
  document.querySelectorAll('[data-dg-step]').forEach((e) => { e.hidden = e.dataset.dgStep !== s; });
  return [];
}"""


def path_legend_markdown(analysis: Analysis) -> str:
    """The key to the gaze path's marks (what applies to this image)."""
    parts = ["Discs: the gazes in order, arrows from each to the next; ringed: the gaze shown below."]
    if any(s.get("structure_correct") is not None for s in analysis.record["steps"]):
        parts.append("Green: the structure named is the ground truth's; red: it is not.")
    if tuple(analysis.explanation.region) != (0.0, 0.0, 1.0, 1.0):
        parts.append("Dashed: the part of the image the network sees.")
    return '<span class="dg-small">' + " ".join(parts) + "</span>"


#: Columns of the table of steps.
TABLE_HEADERS = ["gaze", "structure named", "its probability", "ΔP without it", "attention peak ×uniform",
                 "mask area", "ground truth", "pointing game (matched structure)", "relevance mass"]


def steps_table(analysis: Analysis) -> list[list[Any]]:
    """One row per gaze (:data:`TABLE_HEADERS`)."""
    rec = analysis.record
    rows = []
    for k, s in enumerate(rec["steps"]):
        delta = None if analysis.ablation is None else analysis.ablation[k] - rec["melanoma_probability"]
        gt = structure_label(s.get("gt_structure")) if s.get("gt_structure") is not None else "—"
        if s.get("structure_correct") is not None:
            gt += " ✓" if s["structure_correct"] else " ✗"
        hit = s.get("pointing_hit")
        rows.append([
            k + 1, structure_label(s["structure"]), _fmt(s["structure_probability"]), _fmt(delta, "+.3f"),
            _fmt(s["attention_vs_uniform"], ".1f"), _fmt(s["mask_area_fraction"], ".0%"), gt,
            "—" if hit is None else f"{'hit' if hit else 'miss'} ({structure_label(s['matched_structure'])})",
            _fmt(s.get("relevance_mass")),
        ])
    return rows


def intervention_markdown(analysis: Analysis, keep: Sequence[int], p: float) -> str:
    """The recomputed diagnosis, in words, against the one with every gaze."""
    rec = analysis.record
    full, threshold = rec["melanoma_probability"], rec["threshold"]
    off = [t for t in range(1, analysis.steps + 1) if t not in set(keep)]
    decision = "melanoma" if p >= threshold else "benign"
    if not off:
        return f"All gazes used: P(melanoma) = {full:.3f} → {rec['prediction']}. Untick a gaze to remove it."
    flip = " — **the decision changes**" if decision != rec["prediction"] else " — the decision stays"
    return (f"Without gaze{'s' if len(off) > 1 else ''} {', '.join(map(str, off))}: P(melanoma) = **{p:.3f}** → "
            f"{decision} (ΔP = **{p - full:+.3f}** against {full:.3f} with all gazes){flip}.")


# ----------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------

_CSS = """
.dg-diagnosis {padding: 12px 16px; border-radius: 8px; border: 2px solid #999; font-size: 1.05em}
.dg-diagnosis.dg-melanoma {border-color: #d73027; background: #fdecea}
.dg-diagnosis.dg-benign {border-color: #1a9850; background: #eaf6ee}
.dg-prob {font-size: 1.6em}
.dg-small {font-size: 0.85em; color: #555}
#dg-status p {margin: 0}
.dg-error {color: #b00020; font-weight: 600}
.dg-warn {color: #8a5a00}
.dg-panel[hidden] {display: none !important}
.dg-figs {display: flex; flex-wrap: wrap; gap: 12px}
.dg-fig {margin: 0; flex: 1 1 280px; max-width: 384px}
.dg-fig figcaption {font-size: 0.9em; color: #444; margin-bottom: 4px}
.dg-fig img {width: 100%; height: auto; display: block; border-radius: 4px}
.dg-fig.dg-path {max-width: 520px}
.dg-step-text {font-size: 1.02em; margin-bottom: 8px}
.dg-step-text ul {margin: 4px 0 0 1.2em}
"""

_INTRO = """\
# dermogaze — how the network reached its diagnosis

The network looks at a dermoscopic image in **{steps} successive gazes**. At each gaze it attends to
one region (bright = where it looked), outlines a dermoscopic structure there and names it; the
diagnosis is computed from what the gazes saw. Walk through the gazes with the slider, and untick
gazes to see how the diagnosis changes without them. *Research software, not a medical device.*

Model: `{variant}`, {size}×{size} px input, checkpoint `{checkpoint}`.
"""


_STEP_LEGEND = (
    "Attention: brighter = looked harder, on one colour scale for all the gazes of the image. Mask: where the network "
    "places the structure it names (filled by its probability, outlined at 50%). Ground truth: the annotated mask "
    "that the gaze's mask overlaps most. The pointing game and the relevance mass are those of the structure the "
    "training loss's matching gives the gaze (each structure to one gaze), which may be another."
)


def _status(kind: str, text: str) -> str:
    """A message of the status line (``error`` or ``warn``); its text (file names...) is escaped."""
    return f'<span class="dg-{kind}">{html.escape(text)}</span>' if text else ""


def build_app(viewer: Viewer):
    """The Gradio page over ``viewer`` (see the module docstring); returns an unlaunched ``gr.Blocks``."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before Gradio is first imported: no telemetry thread
    try:
        import gradio as gr
    except ImportError:
        raise DermogazeError(
            "dermogaze serve needs Gradio, which is not installed: pip install 'dermogaze[serve]'"
        ) from None

    steps = viewer.steps
    intro = _INTRO.format(steps=steps or "no", variant=viewer.variant, size=viewer.image_size,
                          checkpoint=viewer.checkpoint)
    with gr.Blocks(title="dermogaze viewer", analytics_enabled=False, delete_cache=(1800, 3600)) as app:
        analysis_state = gr.State(None)
        gr.Markdown(intro)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                gr.Markdown("### 1 · Choose an image")
                with gr.Tabs():
                    with gr.Tab("Upload an image"):
                        upload = gr.File(label="Dermoscopic image (JPEG or PNG), dropped here or chosen",
                                         type="filepath", elem_id="dg-upload", height=150)
                    if viewer.splits:
                        with gr.Tab("Images with ground truth"):
                            split = gr.Dropdown(viewer.splits, value=viewer.splits[0], label="Split of the data")
                            gallery = gr.Gallery(viewer.gallery(viewer.splits[0]), columns=3, height=360,
                                                 allow_preview=False, elem_id="dg-gallery",
                                                 label=f"Click an image (the first {GALLERY_SIZE} of the split)")
                status = gr.HTML("", elem_id="dg-status")
            with gr.Column(scale=3, min_width=320, visible=False) as top:
                gr.Markdown("### 2 · Diagnosis")
                diagnosis = gr.HTML("", elem_id="dg-diagnosis")
                path_view = gr.HTML("", elem_id="dg-path-view")
                path_legend = gr.Markdown("", elem_id="dg-path-legend")
        with gr.Column(visible=False) as details:
            with gr.Column(visible=steps > 0):
                gr.Markdown("### 3 · The gazes, one by one")
                step = gr.Slider(1, max(steps, 2), value=1, step=1, label="Gaze (drag, or type its number)",
                                 elem_id="dg-step", interactive=steps > 1)
                gazes_view = gr.HTML("", elem_id="dg-gazes")
                gr.Markdown(_STEP_LEGEND, elem_classes="dg-small")
                gr.Markdown("### 4 · What if the network had not looked there?")
                with gr.Row(equal_height=True):
                    keep = gr.CheckboxGroup(choices=[(f"gaze {t}", t) for t in range(1, steps + 1)],
                                            value=list(range(1, steps + 1)), elem_id="dg-keep", scale=3,
                                            label="Gazes the diagnosis may use (untick to remove one)")
                    p_keep = gr.Number(label="P(melanoma) from the ticked gazes", precision=3, interactive=False,
                                       elem_id="dg-p-keep", scale=1)
                effect = gr.Markdown("", elem_id="dg-effect")
            gr.Markdown("### 5 · All gazes")
            table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, elem_id="dg-table", wrap=True,
                                 show_label=False)
            gr.Markdown("### Download")
            download = gr.Button("Prepare the JSON record and the figures of dermogaze explain", size="sm",
                                 elem_id="dg-download")
            files = gr.File(label="Files", file_count="multiple", interactive=False, elem_id="dg-files",
                            visible=False)
            with gr.Accordion("JSON record (as written by dermogaze explain)", open=False):
                record_json = gr.JSON(elem_id="dg-record")

        analysis_outputs = [analysis_state, status, top, details, diagnosis, path_view, path_legend, step, gazes_view,
                            table, keep, p_keep, effect, record_json, files]

        def show(analysis: Analysis) -> tuple:
            t_steps = analysis.steps if analysis.has_gazes else 0
            notes = " ".join(_status("warn", n) for n in analysis.notes)
            ticked = list(range(1, t_steps + 1))
            keep_update = gr.update(choices=[(f"gaze {t}: {structure_label(s['structure'])}", t) for t, s in
                                             zip(ticked, analysis.record["steps"], strict=True)], value=ticked)
            p = analysis.record["melanoma_probability"]
            return (analysis, notes, gr.update(visible=True), gr.update(visible=True),
                    diagnosis_html(analysis, viewer.threshold_rule), path_html(analysis),
                    path_legend_markdown(analysis), gr.update(value=1), gazes_html(analysis), steps_table(analysis),
                    keep_update, p,
                    intervention_markdown(analysis, ticked, p), analysis.record, gr.update(value=None, visible=False))

        def refuse(message: str) -> tuple:
            return (None, _status("error", message), gr.update(visible=False), gr.update(visible=False), "", "", "",
                    gr.update(value=1), "", [], gr.update(), None, "", None, gr.update(value=None, visible=False))

        def analyse_upload(path: str | None):
            """The analysis, and the upload field emptied: ready for the next image (the diagnosis names this one)."""
            if not path:
                return *refuse("No file was uploaded."), None
            try:
                return *show(viewer.analyse_file(path)), None
            except DermogazeError as exc:  # DataError included: a bad file, named
                return *refuse(str(exc)), None

        def analyse_pick(split_name: str, evt: gr.SelectData):
            try:
                return show(viewer.analyse_cached(split_name, int(evt.index)))
            except DermogazeError as exc:
                return refuse(str(exc))

        def intervene(analysis: Analysis | None, ticked: list[int]):
            if analysis is None or not analysis.has_gazes:
                return None, ""
            ticked = sorted(int(t) for t in ticked or [])
            p = viewer.intervene(analysis, ticked)
            return p, intervention_markdown(analysis, ticked, p)

        def prepare_files(analysis: Analysis | None):
            if analysis is None:
                return gr.update(value=None, visible=False)
            return gr.update(value=[str(p) for p in viewer.save_files(analysis)], visible=True)

        upload.upload(analyse_upload, upload, [*analysis_outputs, upload], api_name="analyse_upload",
                      concurrency_id="model", concurrency_limit=1)
        if viewer.splits:
            gallery.select(analyse_pick, split, analysis_outputs, api_visibility="private",
                           concurrency_id="model", concurrency_limit=1)
            split.change(lambda s: viewer.gallery(s), split, gallery, api_visibility="private")
        step.change(None, step, None, js=_SHOW_STEP_JS, api_visibility="private", show_progress="hidden")
        keep.input(intervene, [analysis_state, keep], [p_keep, effect], api_name="intervene", queue=False,
                   show_progress="hidden", trigger_mode="always_last")
        download.click(prepare_files, analysis_state, files, api_name="downloads", concurrency_id="files",
                       concurrency_limit=1)
    return app


def launch(
    viewer: Viewer, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, prevent_thread_lock: bool = False,
    quiet: bool = False,
):
    """Build the page and serve it (offline: see the module docstring).

    Args:
        viewer: the loaded checkpoint.
        host: address to bind (``127.0.0.1``: this machine only).
        port: TCP port.
        prevent_thread_lock: return once the server runs (tests, benchmarks) instead of blocking.
        quiet: no start-up message from Gradio.

    Returns:
        The launched ``gr.Blocks`` (``close()`` stops it).

    Raises:
        DermogazeError: the port is taken.
    """
    if not 1 <= port <= 65535:
        raise DermogazeError(f"--port {port}: a TCP port is a number from 1 to 65535")
    app = build_app(viewer)
    try:
        app.launch(
            server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=prevent_thread_lock,
            quiet=quiet, show_error=False, footer_links=["api"], run_history=False, enable_monitoring=False,
            mcp_server=False, ssr_mode=False, pwa=False, theme="default", css=_CSS,
        )
    except OSError as exc:
        raise DermogazeError(f"cannot serve on {host}:{port}: {exc} (choose another --port)") from None
    return app
