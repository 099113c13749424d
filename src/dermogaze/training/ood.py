"""Fitting the out-of-distribution score (:mod:`dermogaze.metrics.ood`) of a model on its prepared training cache.

* :func:`encoder_features` runs the encoder alone over a split (eval mode, the evaluation crop, the checkpoint's
  normalisation) and returns ``GAP(X')`` per image;
* :func:`fit_ood` fits μ and Σ on the training split and τ on the validation split;
* :func:`fit_run_ood` is what ``train`` calls when the run ends: it fits the distribution of ``last.pt`` and of
  ``best.pt`` (once when they hold the same epoch) and writes it into their ``ood`` field, keeping the run folder's
  order (``last.pt`` first, :mod:`.run_folder`);
* :func:`fit_checkpoint_ood` gives any checkpoint, one written before the score existed included, its score from
  the cache it was trained on.

Only the encoder runs (blocks 1-3), without gradients: a pass over the training and validation splits costs a
fraction of a training epoch.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.cache import load_info
from ..data.dataset import DermoscopyDataset
from ..errors import DataError, DermogazeError
from ..files import copy_file
from ..interrupt import check as check_interrupt
from ..metrics.ood import QUANTILE, FeatureDistribution, pooled_features
from ..models import GazeNet
from ..runtime import Autocast, autocast_factory, resolve_device
from .checkpoint import check_structure_set, load_checkpoint, model_from_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

#: Images per encoder pass.
BATCH_SIZE = 32


@torch.no_grad()
def encoder_features(
    model: GazeNet,
    cache: str | Path,
    split: str,
    *,
    normalisation: tuple[list[float], list[float]],
    device: torch.device | str = "cpu",
    autocast: Autocast = contextlib.nullcontext,
    batch_size: int = BATCH_SIZE,
    workers: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """``GAP(X')`` of every image of a split (:func:`~dermogaze.metrics.ood.pooled_features`), in the cache's order.

    Args:
        model: the network (put in eval mode; only its encoder runs).
        cache, split: the prepared cache and its split.
        normalisation: the model's ``(mean, std)`` (its checkpoint's).
        device: where the encoder runs; autocast: its precision (the features are returned in float32).
        batch_size, workers: of the data loader.
        progress: show a progress bar.

    Returns:
        float32 ``(N, C)``.
    """
    model.eval()
    device = torch.device(device)
    dataset = DermoscopyDataset(cache, split, image_size=model.image_size, normalisation=normalisation)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    chunks = []
    for batch in tqdm(loader, desc=f"features {split}", unit="batch", disable=not progress, leave=False):
        check_interrupt()
        images = batch["image"].to(device)
        if device.type == "cpu":
            images = images.contiguous(memory_format=torch.channels_last)  # as GazeNet.forward_with_state
        with autocast():
            x_prime, _ = model.encoder(images)  # X' (B, C, h, w)
        chunks.append(pooled_features(x_prime).cpu().numpy())  # (B, C)
    channels = model.encoder.out_channels
    return np.concatenate(chunks) if chunks else np.zeros((0, channels), np.float32)


def fit_ood(
    model: GazeNet,
    cache: str | Path,
    *,
    normalisation: tuple[list[float], list[float]],
    train_split: str = "train",
    val_split: str = "val",
    quantile: float = QUANTILE,
    device: torch.device | str = "cpu",
    autocast: Autocast = contextlib.nullcontext,
    batch_size: int = BATCH_SIZE,
    workers: int = 0,
    progress: bool = False,
) -> FeatureDistribution:
    """The model's feature distribution on ``train_split`` and its threshold on ``val_split`` of ``cache``.

    Raises:
        DermogazeError / DataError: a missing split, too few images, features that are not finite or do not vary.
    """
    kw: dict[str, Any] = dict(normalisation=normalisation, device=device, autocast=autocast, batch_size=batch_size,
                              workers=workers, progress=progress)
    train = encoder_features(model, cache, train_split, **kw)
    val = encoder_features(model, cache, val_split, **kw)
    return FeatureDistribution.fit(train, val, quantile)


def _fit_checkpoint(ckpt: dict[str, Any], cache: Path, **kw: Any) -> FeatureDistribution:
    """:func:`fit_ood` of a loaded checkpoint's network, on the splits its configuration trained and validated on."""
    data = ckpt["config"]["data"]
    model = model_from_checkpoint(ckpt).to(kw["device"])
    return fit_ood(model, cache, normalisation=(list(ckpt["mean"]), list(ckpt["std"])),
                   train_split=data["train_split"], val_split=data["val_split"], **kw)


def fit_run_ood(
    last: Path,
    best: Path,
    cache: str | Path,
    *,
    device: torch.device | str = "cpu",
    autocast: Autocast = contextlib.nullcontext,
    workers: int = 0,
    progress: bool = False,
) -> FeatureDistribution | None:
    """Fit and store the ``ood`` field of a finished run's ``last.pt`` and ``best.pt``.

    A fit that cannot be made (too few images, constant or non-finite features) is logged as a warning and leaves
    the checkpoints without a score: the run itself is complete.

    Returns:
        The distribution of ``best.pt`` (or of ``last.pt`` when there is no ``best.pt``), or None.
    """
    kw: dict[str, Any] = dict(device=device, autocast=autocast, workers=workers, progress=progress)
    cache = Path(cache)
    try:
        ckpt = load_checkpoint(last)
        fitted = _fit_checkpoint(ckpt, cache, **kw)
        save_checkpoint(last, {**_saved(ckpt), "ood": fitted.to_state()})
        if not best.is_file():
            return fitted
        other = load_checkpoint(best)
        if int(other["epoch"]) == int(ckpt["epoch"]):  # best.pt is a copy of last.pt
            copy_file(last, best)
        else:
            fitted = _fit_checkpoint(other, cache, **kw)
            save_checkpoint(best, {**_saved(other), "ood": fitted.to_state()})
    except DermogazeError as exc:  # DataError included
        logger.warning("no out-of-distribution score for %s: %s", last.parent, exc)
        return None
    logger.info("out-of-distribution score fitted on %d training images: threshold %.3f (the %.0f%% quantile of %d "
                "validation distances)", fitted.n_train, fitted.threshold, 100 * fitted.quantile, fitted.n_val)
    return fitted


def fit_checkpoint_ood(
    checkpoint: str | Path,
    cache: str | Path,
    *,
    out: str | Path | None = None,
    quantile: float = QUANTILE,
    device: str = "auto",
    amp: str = "off",
    workers: int = 0,
    progress: bool = True,
) -> FeatureDistribution:
    """Give a checkpoint (one written before the score existed included) its out-of-distribution score.

    The distribution is fitted on the training split of ``cache`` and the threshold on its validation split (the
    splits of the checkpoint's configuration): give the cache the model was trained on. The checkpoint is
    rewritten atomically with its ``ood`` field (every other field as it was), or written to ``out``.

    Args:
        checkpoint: ``RUN/best.pt``.
        cache: the prepared cache it was trained on.
        out: where to write the checkpoint (default: in place).
        quantile: q of the threshold.
        device, amp: where and in which precision the encoder runs.
        workers: data-loader workers; progress: show progress bars.

    Returns:
        The fitted distribution.

    Raises:
        DermogazeError / DataError: an unreadable checkpoint or cache, a cache of another structure set or without
            the splits, a fit that cannot be made.
    """
    ckpt = load_checkpoint(checkpoint)
    cache = Path(cache)
    info = load_info(cache)
    check_structure_set(ckpt, info, cache)
    fingerprint = ckpt["training_data"].get("fingerprint")
    if fingerprint is not None:
        from ..data.provenance import fingerprint as cache_fingerprint

        if cache_fingerprint(cache, info) != fingerprint:
            raise DataError(f"cache {cache} is not the one {checkpoint} was trained on (its training data has the "
                            f"fingerprint {fingerprint}); give the cache it was trained on")
    dev = resolve_device(device)
    fitted = _fit_checkpoint(ckpt, cache, device=dev, autocast=autocast_factory(dev, amp), workers=workers,
                             progress=progress, quantile=quantile)
    save_checkpoint(checkpoint if out is None else out, {**_saved(ckpt), "ood": fitted.to_state()})
    return fitted


def _saved(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A loaded checkpoint as it is written (without the ``path`` :func:`load_checkpoint` adds)."""
    return {k: v for k, v in ckpt.items() if k != "path"}
