"""``evaluate``: every SPEC §6 metric of a checkpoint on a prepared split, and its files.

Outputs in ``out_dir`` (default ``<checkpoint folder>/eval_<split>``):

- ``metrics.json``: :meth:`~dermogaze.metrics.EvaluationAccumulator.compute` plus an ``info``
  block (checkpoint, epoch, variant, cache, split);
- ``predictions.csv``: ``image_id,melanoma[,label]`` (the ISIC 2017 Part 3 submission shape);
- ``roc.png`` (labelled images) and, for decoder variants, ``confusion_matrix.png`` (Fig. 6).

The images are normalised with the checkpoint's training mean/std, so a cache prepared separately
(e.g. only the test split) gives the same inputs as during training. Superpixel maps, when the
cache has them, are center-cropped like the masks and feed the ISIC 2017 Task 2 AUC. The metrics
come from the same evaluation pass as validation during training
(:func:`~dermogaze.training.loop.run_inference`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from . import __version__
from .config import Config
from .data.cache import load_info, load_split
from .data.dataset import DermoscopyDataset
from .errors import DataError, DermogazeError
from .io import write_json
from .metrics import write_predictions_csv
from .plots import plot_confusion_matrix, plot_roc
from .runtime import autocast_factory, resolve_device
from .training.checkpoint import load_checkpoint, model_from_checkpoint
from .training.loop import run_inference

logger = logging.getLogger(__name__)


def check_checkpoint_data(ckpt: Mapping[str, Any], info: Mapping[str, Any], cache: str | Path) -> None:
    """Refuse (one clear line) a cache the checkpoint's model cannot run on; warn on softer mismatches.

    Args:
        ckpt: from :func:`~dermogaze.training.checkpoint.load_checkpoint`.
        info: the cache's ``info.json``.
        cache: the cache folder (for messages).

    Raises:
        DataError: the cache's images are smaller than the model's input size.
    """
    size, image_size, trained_on = int(info["size"]), int(ckpt["image_size"]), int(ckpt["cache_size"])
    if size < image_size:
        raise DataError(
            f"cache {cache} holds {size} px images but the model of {ckpt['path']} takes {image_size} px crops; "
            f"prepare the data with --size {trained_on}"
        )
    if trained_on != size:
        logger.warning(
            "cache %s was prepared at %d px but the model was trained on a %d px cache: the %d px center crop "
            "then covers a different part of the image", cache, size, trained_on, image_size,
        )
    if not np.allclose(info["mean"], ckpt["mean"], atol=1e-3) or not np.allclose(info["std"], ckpt["std"], atol=1e-3):
        logger.info("normalising with the checkpoint's training mean/std, not those of cache %s", cache)


def evaluate_checkpoint(
    checkpoint: str | Path,
    cache: str | Path | None = None,
    split: str = "test",
    out_dir: str | Path | None = None,
    *,
    device: str = "auto",
    batch_size: int | None = None,
    workers: int = 0,
    amp: str = "off",
    figures: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``split`` of ``cache`` and write the files of the module docstring.

    Args:
        checkpoint: ``RUN/best.pt`` or ``RUN/last.pt``.
        cache: prepared cache; default: the one named in the checkpoint's config.
        split: cache split name (``train``, ``val``, ``test``).
        out_dir: output folder.
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: default: the training batch size.
        workers: data-loader workers.
        amp: ``off``, ``bf16`` or ``fp16`` (CUDA only).
        figures: write the figures.
        progress: show a progress bar.

    Returns:
        ``{"metrics": dict, "out_dir": Path, "files": {name: Path}}``.

    Raises:
        DermogazeError / DataError: unreadable checkpoint, missing cache or split, a cache the
            model cannot run on.
    """
    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    cfg = Config.from_dict(ckpt["config"], source=f"{checkpoint} config")
    if cache is None:
        if not cfg.data.cache:
            raise DermogazeError(f"{checkpoint} names no data cache: pass --data CACHE")
        cache = cfg.data.cache
    cache = Path(cache)
    info = load_info(cache)
    if split not in info["splits"]:
        raise DataError(f"cache {cache} has no split {split!r} (it holds {', '.join(info['splits'])})")
    check_checkpoint_data(ckpt, info, cache)
    model = model_from_checkpoint(ckpt)
    dev = resolve_device(device)
    model.to(dev)

    has_sp = bool(info["has_superpixels"]) and model.needs_masks
    dataset = DermoscopyDataset(
        cache, split, image_size=int(ckpt["image_size"]), return_superpixels=has_sp,
        normalisation=(ckpt["mean"], ckpt["std"]),
    )
    loader = DataLoader(
        dataset, batch_size=batch_size or cfg.train.batch_size, shuffle=False, num_workers=workers,
        pin_memory=dev.type == "cuda",
    )
    result = run_inference(
        model, loader, device=dev, structures=ckpt["structures"], autocast=autocast_factory(dev, amp),
        with_masks=dataset.has_masks, sp_features=load_split(cache, split).sp_features if has_sp else None,
        progress=progress, desc=f"evaluate {split}",
    )
    metrics = result.metrics
    metrics["info"] = {
        "checkpoint": str(checkpoint),
        "epoch": int(ckpt["epoch"]),
        "variant": ckpt["variant"],
        "cache": str(cache),
        "split": split,
        "image_size": int(ckpt["image_size"]),
        "dermogaze_version": __version__,
    }
    out = Path(out_dir) if out_dir is not None else checkpoint.parent / f"eval_{split}"
    predictions = result.accumulator.predictions
    files = {
        "metrics": write_json(metrics, out / "metrics.json"),
        "predictions": write_predictions_csv(predictions, out / "predictions.csv"),
    }
    if figures:
        files.update(evaluation_figures(metrics, predictions, out, ckpt["structures"]))
    logger.info("evaluation of %s on %s/%s written to %s", checkpoint, cache, split, out)
    return {"metrics": metrics, "out_dir": out, "files": files}


def evaluation_figures(
    metrics: Mapping[str, Any], predictions: Mapping[str, Sequence], out: Path, structures: Sequence[str]
) -> dict[str, Path]:
    """``roc.png`` (labelled images only) and, for decoder variants, ``confusion_matrix.png`` (Fig. 6)."""
    files: dict[str, Path] = {}
    known = [k for k, v in enumerate(predictions["labels"]) if v is not None]
    if known:
        split = metrics.get("info", {}).get("split", "")
        files["roc"] = plot_roc(
            [int(predictions["labels"][k]) for k in known],
            [float(predictions["probs"][k]) for k in known],
            out / "roc.png",
            title=f"melanoma diagnosis, {split} split" if split else "",
        )
    s = metrics.get("structures")
    if s and s["n_images"] > 0:
        files["confusion_matrix"] = plot_confusion_matrix(
            s["confusion_matrix"], out / "confusion_matrix.png", counts=s["confusion_counts"], structures=structures,
            accuracy=s["accuracy"],
        )
    return files
