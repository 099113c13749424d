"""``predict``: challenge submission files of a checkpoint on every image of a prepared split.

Formats:

- ``isic2018-task2``: one PNG per image and attribute, ``ISIC_<id>_attribute_<name>.png``
  (single-channel, 0/255, the image's original size), the shape the ISIC 2018 Task 2 scorer
  (``isic-challenge-scoring``) reads. The mask of an attribute is the union of the gaze steps that
  name it (the arg-max of the step's structure classifier), each step's mask thresholded at 0.5
  (:func:`dermogaze.metrics.structures.named_masks`; an attribute no step names gets an empty mask). It is
  computed as ``max`` over those steps of the step's probability map, brought back to the original
  image (the model's center crop placed in the cached square, the square resized bilinearly to the
  original width and height) and thresholded at 0.5 there: at the model's own resolution this is
  exactly the union of the thresholded steps. Pixels outside the center crop, which the model never
  saw, are predicted absent. Needs a model with a structure decoder trained on the ISIC 2018
  structure set.
- ``isic2017-part3``: one CSV, ``image_id,melanoma,seborrheic_keratosis``, one row per image of the
  split (the ISIC 2017 Part 3 ground-truth shape); ``melanoma`` is the calibrated P(melanoma) (the
  checkpoint's temperature, as ``evaluate``'s ``predictions.csv``). dermogaze does not diagnose
  seborrheic keratosis: that column holds 0.0 so that the file has the official shape; it carries
  no prediction.

The images are the cached ones (normalised with the checkpoint's training statistics), so the
inputs are those of ``evaluate``; their original sizes are recorded in the cache at ``prepare``.

What the model was trained on is logged (:func:`~dermogaze.data.provenance.describe`) and returned; a model
trained on synthetic images predicting a real collection logs, and returns in ``notes``,
:data:`~dermogaze.data.provenance.DEMONSTRATION_NOTE`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import SUBMISSION_FORMATS
from ..data.cache import load_info, load_split
from ..data.dataset import DermoscopyDataset
from ..data.provenance import collection_kind, demonstration_note, describe
from ..data.transforms import center_crop_slices
from ..errors import DataError, DermogazeError
from ..files import atomic_write, write_csv
from ..interrupt import check as check_interrupt
from ..metrics.diagnosis import check_finite_outputs
from ..runtime import autocast_factory, resolve_device
from ..structures import ISIC2018_STRUCTURES, dermoscopic
from ..training.checkpoint import check_structure_set, load_checkpoint, model_from_checkpoint

logger = logging.getLogger(__name__)


def attribute_file(image_id: str, attribute: str) -> str:
    """``ISIC_<id>_attribute_<name>.png``: the Task 2 file name of one image and attribute."""
    return f"{image_id}_attribute_{attribute}.png"


def attribute_maps(masks: np.ndarray, classes: np.ndarray, indices: list[int]) -> np.ndarray:
    """Per attribute, the max of the probability maps of the steps that name it (0 where none does).

    ``attribute_maps(...) >= 0.5`` equals :func:`dermogaze.metrics.structures.named_masks` of those attributes.

    Args:
        masks: ``(T, S, S)`` step probabilities; classes: ``(T,)`` structure index named by each step.
        indices: the structure indices of the attributes.

    Returns:
        float32 ``(len(indices), S, S)``.
    """
    out = np.zeros((len(indices), *masks.shape[1:]), dtype=np.float32)
    for a, s in enumerate(indices):
        named = masks[classes == s]  # (k, S, S)
        if named.shape[0]:
            out[a] = named.max(axis=0)
    return out


def to_original(prob: np.ndarray, cache_size: int, size: tuple[int, int]) -> np.ndarray:
    """A map over the model's center crop, back on the original image: bool ``(H, W)`` at ``>= 0.5``.

    Args:
        prob: float ``(s, s)`` over the center crop of the cached square.
        cache_size: side of the cached square.
        size: original ``(width, height)``.
    """
    canvas = np.zeros((cache_size, cache_size), dtype=np.float32)
    rows, cols = center_crop_slices(cache_size, prob.shape[0])
    canvas[rows, cols] = prob
    resized = Image.fromarray(canvas, mode="F").resize(tuple(int(v) for v in size), Image.BILINEAR)
    return np.asarray(resized) >= 0.5


def _write_png(mask: np.ndarray, path: Path) -> None:
    with atomic_write(path, "wb") as fh:
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(fh, format="PNG")


@torch.no_grad()
def predict(
    checkpoint: str | Path,
    cache: str | Path,
    split: str,
    out: str | Path,
    *,
    fmt: str = "isic2018-task2",
    device: str = "auto",
    amp: str = "off",
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the submission files of ``checkpoint`` on every image of ``split`` of ``cache``.

    Args:
        checkpoint: ``RUN/best.pt`` or ``RUN/last.pt``.
        cache: a prepared cache.
        split: its split to predict.
        out: output folder (``isic2018-task2``) or CSV file (``isic2017-part3``).
        fmt: one of :data:`~dermogaze.config.SUBMISSION_FORMATS` (see the module docstring).
        device: ``auto``, ``cpu`` or ``cuda``.
        amp: ``off``, ``bf16`` or ``fp16``: the forward pass's precision (:func:`dermogaze.runtime.effective_amp`).
        batch_size: images per forward pass.
        progress: show a progress bar.

    Returns:
        ``{"format", "n_images", "files", "training_data", "notes"}`` (``files``: how many files, or the CSV path;
        ``training_data``: the checkpoint's; ``notes``: lines for the reader).

    Raises:
        DermogazeError / DataError: unknown format, unreadable checkpoint or cache, a cache of
            another structure set, a model without a decoder or not trained on ISIC 2018 for
            ``isic2018-task2``, a cache without original sizes, non-finite model outputs.
    """
    if fmt not in SUBMISSION_FORMATS:
        raise DermogazeError(f"unknown format {fmt!r}: expected one of {', '.join(SUBMISSION_FORMATS)}")
    ckpt = load_checkpoint(checkpoint)
    cache = Path(cache)
    info = load_info(cache)
    if split not in info["splits"]:
        raise DataError(f"cache {cache} has no split {split!r} (it holds {', '.join(info['splits'])})")
    check_structure_set(ckpt, info, cache)
    structures = tuple(ckpt["structures"])
    provenance = {"training_data": ckpt["training_data"],
                  "notes": [n for n in [demonstration_note(ckpt["training_data"], collection_kind(info))] if n]}
    logger.info("%s was trained on %s", checkpoint, describe(ckpt["training_data"]))
    for note in provenance["notes"]:
        logger.warning("%s", note)
    model = model_from_checkpoint(ckpt)
    if fmt == "isic2018-task2":
        if structures != ISIC2018_STRUCTURES:
            raise DermogazeError(f"{checkpoint}: isic2018-task2 needs a model trained on the ISIC 2018 structures, "
                                 f"this one knows {', '.join(structures)}")
        if not model.needs_masks:
            raise DermogazeError(f"{checkpoint}: the {ckpt['variant']!r} model has no structure decoder, so it "
                                 "predicts no attribute masks")
    arrays = load_split(cache, split)
    dev = resolve_device(device)
    model.to(dev)
    autocast = autocast_factory(dev, amp)
    dataset = DermoscopyDataset(
        cache, split, image_size=int(ckpt["image_size"]), normalisation=(ckpt["mean"], ckpt["std"])
    )
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    temperature = float(ckpt["calibration"]["temperature"])
    attributes = dermoscopic(structures)
    indices = [structures.index(a) for a in attributes]
    out = Path(out)
    probs: list[float] = []
    n_files = 0
    bar = tqdm(total=len(dataset), desc=f"predict {split}", unit="img", disable=not progress)
    with bar:
        for batch in loader:
            check_interrupt()
            with autocast():
                output = model(batch["image"].to(dev))
            output = output.float()
            p = output.calibrated_melanoma_prob(temperature).cpu().numpy()  # (B,)
            check_finite_outputs(list(batch["id"]), {"melanoma probabilities": p}, f"the model in {checkpoint}")
            probs.extend(float(v) for v in p)
            if fmt == "isic2018-task2":
                masks = output.masks.cpu().numpy()  # (B, T, s, s)
                classes = output.structure_logits.argmax(-1).cpu().numpy()  # (B, T)
                for i, k in enumerate(batch["index"].tolist()):
                    maps = attribute_maps(masks[i], classes[i], indices)  # (F, s, s)
                    size = tuple(int(v) for v in arrays.sizes[k])
                    for name, prob in zip(attributes, maps, strict=True):
                        mask = to_original(prob, int(info["size"]), size)
                        _write_png(mask, out / attribute_file(arrays.ids[k], name))
                        n_files += 1
            bar.update(len(p))
    if fmt == "isic2017-part3":
        path = write_csv(["image_id", "melanoma", "seborrheic_keratosis"],
                         ([i, f"{p:.6f}", "0.0"] for i, p in zip(dataset.ids, probs, strict=True)), out)
        logger.info("wrote %s (%d images)", path, len(probs))
        return {"format": fmt, "n_images": len(probs), "files": str(path), **provenance}
    logger.info("wrote %d attribute masks of %d images to %s", n_files, len(probs), out)
    return {"format": fmt, "n_images": len(probs), "files": n_files, **provenance}
