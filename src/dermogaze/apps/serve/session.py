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

What one server holds is bounded: everything it writes lies in its own folder
(:class:`~.workspace.ServerFolder`, removed when it stops); an upload is refused above
:data:`MAX_UPLOAD_PIXELS` from its header, before a pixel is decoded; the full-size images of the analyses,
which only their downloads need, are held for the newest analyses within :data:`ORIGINALS_BYTES`
(:class:`_Originals`; what the page and the interventions use stays with each session); the gallery's pictures
are at most :data:`GALLERY_SIZE` per split (named by content); only the newest :data:`DOWNLOADS_KEPT` download
folders are kept. Every refusal is a :class:`~dermogaze.errors.DermogazeError` whose message names the file by
the name it was given, never by the server's folders.
"""

import hashlib
import io
import shutil
import tempfile
import threading
import weakref
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
from ...data.images import check_image_file, load_user_image, normalise
from ...data.provenance import collection_kind, describe
from ...data.transforms import center_crop_slices
from ...errors import DataError, DermogazeError
from ...explain.record import Explanation, cache_region, explain_image
from ...explain.run import safe_name, save_explanation
from ...files import atomic_write
from ...metrics.ood import FeatureDistribution
from ...models import GazeNet, GazeState
from ...runtime import autocast_factory, default_amp, effective_amp, precision_name, resolve_device
from ...training.checkpoint import load_checkpoint, model_from_checkpoint
from .workspace import ServerFolder

#: Shorter side, in pixels, below which an upload is refused: the smallest network input (five VGG pools).
MIN_IMAGE_SIDE = 32
#: Longest side of the pictures drawn in the page (the image is shown at this size whatever its own).
DISPLAY_SIDE = 384
#: Images of a split shown in the gallery (the first ones, in the cache's order).
GALLERY_SIZE = 48
#: Pixels (width × height) of the largest upload analysed: above the largest ISIC images (about 30 million), and
#: a bound on what each analysis holds (its image, about 3 bytes a pixel) and on one analysis's peak memory.
MAX_UPLOAD_PIXELS = 40_000_000
#: Download folders kept (each request writes one; Gradio has copied its files by the next request).
DOWNLOADS_KEPT = 4
#: Bytes of the full-size images held for downloads (:class:`_Originals`): a few of the largest uploads, dozens of
#: ISIC-sized ones.
ORIGINALS_BYTES = 256 << 20


@dataclass
class Analysis:
    """One analysed image: what a tab keeps between its requests.

    Attributes:
        explanation: :func:`~dermogaze.explain.record.explain_image` output (record and arrays); its full-size
            ``image`` is None once the viewer has let go of it (:class:`_Originals`).
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

    @property
    def image_hw(self) -> tuple[int, int]:
        """``(height, width)`` of the image, in its own pixels."""
        size = self.record["image_size"]
        return int(size["height"]), int(size["width"])


class _KeepState(nn.Module):
    """``net`` whose forward keeps the :class:`GazeState` it returns beside the :class:`GazeOutput`.

    Lets :func:`~dermogaze.explain.record.explain_image` (which calls ``model.forward_with_state(images)``) run
    the one forward pass whose state the interventions reuse. One instance per request.
    """

    def __init__(self, net: GazeNet):
        super().__init__()
        self.net = net
        self.state: GazeState | None = None

    def forward_with_state(self, images: Tensor):
        out, self.state = self.net.forward_with_state(images)
        return out, self.state

    def forward(self, images: Tensor):
        return self.forward_with_state(images)[0]


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
    same picture is one file), so the folder holds at most the gallery's images of every split.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    def __call__(self, array: np.ndarray | None) -> str | None:
        if array is None:
            return None
        data = jpeg_bytes(array)
        path = self.folder / f"{hashlib.sha1(data).hexdigest()}.jpg"
        if not path.exists():
            with atomic_write(path, "wb", fsync=False) as fh:  # transient: never read half-written, not kept
                fh.write(data)
        return str(path)


class _Originals:
    """The full-size images of the analyses, held for their downloads while they fit in a byte budget.

    :meth:`hold` registers a new analysis; the oldest analyses whose images no longer fit in ``budget`` (the
    newest is always kept) let go of theirs (``explanation.image = None``), so that however many sessions keep an
    analysis, their full-size images take at most ``budget`` bytes beyond the newest. Analyses are held weakly:
    one whose session is gone frees its image with it.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._held: list[tuple[weakref.ref, int]] = []  # oldest first: (analysis, bytes of its image)
        self._lock = threading.Lock()

    def hold(self, analysis: "Analysis") -> None:
        with self._lock:
            self._held.append((weakref.ref(analysis), analysis.explanation.image.nbytes))
            self._held = [(ref, n) for ref, n in self._held if ref() is not None]
            total = sum(n for _, n in self._held)
            while len(self._held) > 1 and total > self.budget:
                ref, n = self._held.pop(0)
                if (old := ref()) is not None:
                    old.explanation.image = None
                total -= n


def gaze_numbers(values: Any, steps: int) -> list[int]:
    """``values`` checked as the gazes of an intervention: a list of distinct whole numbers from 1 to ``steps``.

    A number may come as its decimal digits (``"2"``): Gradio's API description gives the choices as strings.

    Raises:
        DermogazeError: naming the first value that is not one (or the model's lack of gazes).
    """
    if steps == 0:
        raise DermogazeError("this model has no gazes to switch off")
    if not isinstance(values, (list, tuple)):
        raise DermogazeError(
            f"the gazes to keep are a list of gaze numbers from 1 to {steps} (e.g. [1, 2]), not {values!r}"
        )
    seen: list[int] = []
    for value in values:
        if isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise DermogazeError(f"gaze {value!r} is not a gaze number: the gazes are numbered 1 to {steps}")
        if not 1 <= value <= steps:
            raise DermogazeError(f"there is no gaze {value}: this model makes {steps} gazes, numbered 1 to {steps}")
        if value in seen:
            raise DermogazeError(f"gaze {value} is listed twice: list each gaze to keep once")
        seen.append(value)
    return seen


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
        amp: ``off``, ``bf16`` or ``fp16``: the precision of the network's passes
            (:func:`dermogaze.runtime.effective_amp`); None: :func:`dermogaze.runtime.default_amp` (bf16 on a
            CPU with native bf16, else float32).
            ``precision`` names the one that runs.

    Attributes:
        folder: the server's temporary folder (:class:`~.workspace.ServerFolder`), removed by :meth:`close`, at
            the end of a ``with`` block, or when the process exits.
        training_data: the checkpoint's (:mod:`dermogaze.data.provenance`); ``trained_on`` says it in a line.
        ood: the checkpoint's out-of-distribution score (:mod:`dermogaze.metrics.ood`), or None.

    Raises:
        DermogazeError / DataError: unreadable checkpoint or cache.
    """

    def __init__(
        self, checkpoint: str | Path, data: str | Path | None = None, *, device: str = "auto", amp: str | None = None
    ):
        self.checkpoint = Path(checkpoint)
        ckpt = load_checkpoint(self.checkpoint)
        self.device = resolve_device(device)
        self.amp = effective_amp(self.device, default_amp(self.device, "serve") if amp is None else amp)
        self.autocast = autocast_factory(self.device, self.amp)
        self.precision = precision_name(self.amp)
        self.model = model_from_checkpoint(ckpt).to(self.device).eval()
        self.image_size = int(ckpt["image_size"])
        self.mean, self.std = list(ckpt["mean"]), list(ckpt["std"])
        self.structures = tuple(ckpt["structures"])
        self.threshold = float(ckpt["calibration"]["threshold"])
        self.temperature = float(ckpt["calibration"]["temperature"])
        self.threshold_rule = str(ckpt["calibration"].get("threshold_rule", ""))
        self.variant = str(ckpt["variant"])
        self.loss = Config.from_dict(ckpt["config"], source=f"{self.checkpoint} config").loss  # its matching
        self.training_data = ckpt["training_data"]
        self.trained_on = describe(self.training_data)
        self.ood = None if ckpt["ood"] is None else FeatureDistribution.from_state(ckpt["ood"])
        self.data = Path(data) if data is not None else None
        self.info = load_info(self.data) if self.data is not None else None
        self.data_kind = collection_kind(self.info) if self.info is not None else None
        if self.info is not None and tuple(self.info["structures"]) != self.structures:
            raise DataError(
                f"cache {self.data} holds the structures {', '.join(self.info['structures'])}, the checkpoint "
                f"{self.checkpoint} names {', '.join(self.structures)}: give the cache the model was trained on"
            )
        self._splits: dict[str, Any] = {}
        self._splits_lock = threading.Lock()
        self.folder = ServerFolder()  # last: a viewer that fails to load leaves nothing behind
        self.pictures = _Pictures(self.folder.pictures)
        self.originals = _Originals(ORIGINALS_BYTES)
        self._downloads_lock = threading.Lock()

    def close(self) -> None:
        """Remove the viewer's folder (:class:`~.workspace.ServerFolder`); the model stays usable for analyses."""
        self.folder.close()

    def __enter__(self) -> "Viewer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        if not isinstance(name, str) or name not in self.splits:
            raise DataError(f"cache {self.data} has no split {name!r} (it holds {', '.join(self.splits)})")
        with self._splits_lock:
            if name not in self._splits:
                self._splits[name] = load_split(self.data, name)
            return self._splits[name]

    # -- the network ---------------------------------------------------------------------------

    @torch.no_grad()
    def _analyse(self, tensor: Tensor, original: np.ndarray, notes: Sequence[str] = (), **explain: Any) -> Analysis:
        keeper = _KeepState(self.model)
        expl = explain_image(
            keeper, tensor, original, structures=self.structures, threshold=self.threshold,
            temperature=self.temperature, model_source=str(self.checkpoint), loss=self.loss, autocast=self.autocast,
            training_data=self.training_data, ood=self.ood, **explain,
        )
        state = keeper.state
        ablation = None
        t_steps = int(expl.record["n_steps"])
        if expl.attention is not None and t_steps > 0:
            keep = ~torch.eye(t_steps, dtype=torch.bool)  # (T, T): row t removes gaze t alone
            with self.autocast():  # the state is in the forward pass's precision
                probs = self.model.diagnose(_expand_state(state, t_steps), keep, temperature=self.temperature)  # (T,)
            ablation = probs.float().cpu().numpy()
        analysis = Analysis(explanation=expl, state=state, display=_display_copy(expl.image), ablation=ablation,
                            notes=tuple(notes))
        self.originals.hold(analysis)
        return analysis

    def analyse_file(self, path: str | Path) -> Analysis:
        """Analyse a user's image file (refusing what the module docstring lists).

        Its size is checked from the header (:func:`~dermogaze.data.images.check_image_file`: the pixel budget,
        then :data:`MAX_UPLOAD_PIXELS` and :data:`MIN_IMAGE_SIDE`) before any pixel is decoded.

        Raises:
            DataError: the file is unreadable, over the pixel budget or :data:`MAX_UPLOAD_PIXELS`, too small or
                grayscale (named by its file name, without the folder it lies in).
        """
        path = Path(path)
        try:
            return self._analyse_file(path)
        except DataError as exc:  # the reader names the full path: the user knows the file by its name
            raise DataError(str(exc).replace(str(path), path.name)) from None

    def _analyse_file(self, path: Path) -> Analysis:
        width, height = check_image_file(path)
        if width * height > MAX_UPLOAD_PIXELS:
            raise DataError(
                f"{path.name}: the image is {width}×{height} = {width * height:,} pixels; the viewer analyses images "
                f"of at most {MAX_UPLOAD_PIXELS:,} pixels: give a reduced copy"
            )
        if min(height, width) < MIN_IMAGE_SIDE:
            raise DataError(
                f"{path.name}: the image is {width}×{height} pixels; a dermoscopic image of at least "
                f"{MIN_IMAGE_SIDE}×{MIN_IMAGE_SIDE} pixels is needed"
            )
        tensor, original = load_user_image(path, self.image_size, self.mean, self.std)
        height, width = original.shape[:2]
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
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(arrays):
            raise DataError(f"split {split} of {self.data} has {len(arrays)} images, not an image number {index!r}")
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
            present=present, label=int(arrays.labels[index]), image_kind=self.data_kind,
        )

    @torch.no_grad()
    def intervene(self, analysis: Analysis, keep: Sequence[int]) -> float:
        """P(melanoma) with only the gazes ``keep`` (1-based step numbers), from the kept network state.

        Raises:
            DermogazeError: ``keep`` is not a list of distinct gaze numbers of the analysis
                (:func:`gaze_numbers`), or the model has no gazes.
        """
        mask = torch.zeros(analysis.steps, dtype=torch.bool)
        mask[[t - 1 for t in gaze_numbers(keep, analysis.steps)]] = True
        with self.autocast():
            return float(self.model.diagnose(analysis.state, mask, temperature=self.temperature)[0])

    def gallery(self, split: str) -> list[tuple[str, str]]:
        """``(picture file, caption)`` of the first :data:`GALLERY_SIZE` images of a split."""
        arrays = self.split(split)
        names = {0: "benign", 1: "melanoma"}
        return [(self.pictures(np.asarray(arrays.images[k])), f"{names[int(arrays.labels[k])]} · {arrays.ids[k]}")
                for k in range(min(GALLERY_SIZE, len(arrays)))]

    def save_files(self, analysis: Analysis) -> list[Path]:
        """Write the JSON record and figures of ``dermogaze explain`` for the image into a fresh folder.

        The folders of earlier calls beyond the newest :data:`DOWNLOADS_KEPT` are removed.

        Raises:
            DermogazeError: the analysis's full-size image was let go (:class:`_Originals`).
        """
        if analysis.explanation.image is None:
            raise DermogazeError(
                f"the full-size copy of {analysis.record['image_id']} is no longer held (the server keeps those of "
                f"its latest analyses, {ORIGINALS_BYTES >> 20} MB): analyse the image again to download its files"
            )
        with self._downloads_lock:
            out = Path(tempfile.mkdtemp(dir=self.folder.downloads))
            folders = sorted(self.folder.downloads.iterdir(), key=lambda f: f.stat().st_mtime_ns)
            for old in folders[:-DOWNLOADS_KEPT]:
                shutil.rmtree(old, ignore_errors=True)
        expl = replace(analysis.explanation, record=dict(analysis.record))  # the tab's record stays as it was
        files = save_explanation(expl, out, safe_name(analysis.record["image_id"]))
        return list(files.values())
