"""The viewer's model side: a checkpoint loaded once, and the analysis of one image (no Gradio).

* :class:`Viewer` loads the checkpoint once per process and analyses an uploaded file
  (:meth:`Viewer.analyse_file`, refusing what :mod:`dermogaze.apps.serve` lists) or an image of a
  prepared split with its ground truth (:meth:`Viewer.analyse_cached`).
* An analysis is one forward pass (:func:`dermogaze.explain.record.explain_image` over
  :meth:`GazeNet.forward_with_state <dermogaze.models.GazeNet.forward_with_state>`, through
  :class:`_KeepState`) and one batched diagnosis for the per-gaze ablation; its :class:`Analysis`
  keeps the network state, so that an intervention (:meth:`Viewer.intervene`) runs the diagnosis
  branch alone (:meth:`~dermogaze.models.GazeNet.diagnose`), no new encoder or ConvLSTM pass.
* The gallery's pictures are JPEG files named by their content (:class:`_Pictures`).
"""

import contextlib
import hashlib
import io
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ...config import Config
from ...data.cache import load_info, load_split
from ...data.images import load_user_image, normalise
from ...data.transforms import center_crop_slices
from ...errors import DataError, DermogazeError
from ...explain.record import Explanation, cache_region, explain_image
from ...explain.run import safe_name, save_explanation
from ...files import atomic_write
from ...models import GazeNet, GazeState
from ...runtime import resolve_device
from ...training.checkpoint import load_checkpoint, model_from_checkpoint

#: Shorter side, in pixels, below which an upload is refused: the smallest network input (five VGG pools).
MIN_IMAGE_SIDE = 32
#: Longest side of the pictures drawn in the page (the image is shown at this size whatever its own).
DISPLAY_SIDE = 384
#: Images of a split shown in the gallery (the first ones, in the cache's order).
GALLERY_SIZE = 48
#: Seconds a drawn picture's file is kept (Gradio copies it into its own cache when the request ends).
PICTURE_LIFETIME_S = 600


@dataclass
class Analysis:
    """One analysed image: what a tab keeps between its requests.

    Attributes:
        explanation: :func:`~dermogaze.explain.record.explain_image` output (record and arrays).
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

    Lets :func:`~dermogaze.explain.record.explain_image` (which calls ``model(images)``) run the one forward
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


def jpeg_bytes(array: np.ndarray) -> bytes:
    """A picture ``(h, w, 3)`` uint8 as JPEG, quality 90, no chroma subsampling (the page's one encoding)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="jpeg", quality=90, subsampling=0)
    return buffer.getvalue()


class _Pictures:
    """The page's pictures as JPEG files for Gradio to serve (:func:`jpeg_bytes`).

    Gradio's own encoders (PNG, WebP) are much slower than JPEG. Files are named by their content (the
    same picture is one file) and removed :data:`PICTURE_LIFETIME_S` seconds after they were written
    (Gradio serves its own copy by then).
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self._written = 0
        self._lock = threading.Lock()

    def __call__(self, array: np.ndarray | None) -> str | None:
        if array is None:
            return None
        data = jpeg_bytes(array)
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
