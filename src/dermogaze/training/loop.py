"""One training step, one training epoch, and one evaluation pass.

:func:`train_step` is the step that training runs and that ``benchmarks/bench_train.py`` times;
:func:`run_inference` is the one evaluation path, used for validation during training and by
``dermogaze evaluate``: it feeds an :class:`~dermogaze.metrics.accumulator.EvaluationAccumulator` on every
rank's shard and merges them (an evaluation computes every docs/design.md §6 metric the same way wherever it
runs). The loss always runs in float32, whatever the autocast context of the forward pass.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.transforms import dihedral_views
from ..errors import DermogazeError
from ..interrupt import check as check_interrupt
from ..losses import GazeLoss
from ..metrics.accumulator import EvaluationAccumulator
from ..metrics.explanation import ExplanationAccumulator
from ..models import GazeNet, GazeOutput, GazeState
from ..runtime import Autocast
from .distributed import SINGLE_PROCESS, DistInfo, all_gather, all_reduce_sum

#: Loss terms logged per epoch (keys of :class:`~dermogaze.losses.GazeLoss`'s output).
LOSS_TERMS = ("loss", "diag", "seg", "cls", "att")


def forward_batch(
    model: nn.Module,
    batch: Mapping[str, Any],
    device: torch.device,
    *,
    channels_last: bool = False,
    autocast: Autocast = contextlib.nullcontext,
) -> tuple[dict[str, Any], GazeOutput]:
    """Move ``batch`` to ``device`` and run the model on its images; the outputs in float32.

    Args:
        model: a :class:`~dermogaze.models.GazeNet`, possibly wrapped (DDP, ``torch.compile``).
        batch: a collated batch of :class:`~dermogaze.data.dataset.DermoscopyDataset`.
        device: the compute device.
        channels_last: feed the images in channels-last memory format.
        autocast: from :func:`dermogaze.runtime.autocast_factory`.

    Returns:
        ``(batch on device, float32 outputs)``.
    """
    batch, images = _batch_to(batch, device, channels_last)
    with autocast():
        out = model(images)
    return batch, out.float()


def forward_batch_with_state(
    model: GazeNet,
    batch: Mapping[str, Any],
    device: torch.device,
    *,
    channels_last: bool = False,
    autocast: Autocast = contextlib.nullcontext,
) -> tuple[dict[str, Any], GazeOutput, GazeState]:
    """:func:`forward_batch` through :meth:`GazeNet.forward_with_state` (the explanation measures need the state)."""
    batch, images = _batch_to(batch, device, channels_last)
    with autocast():
        out, state = model.forward_with_state(images)
    return batch, out.float(), state


def _batch_to(batch: Mapping[str, Any], device: torch.device, channels_last: bool) -> tuple[dict[str, Any], Tensor]:
    """The batch on ``device`` and its images ``(B, 3, H, W)`` in the memory format asked for."""
    non_blocking = device.type == "cuda"
    batch = {k: v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v for k, v in batch.items()}
    images = batch["image"]  # (B, 3, H, W)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return batch, images


def train_step(
    model: nn.Module,
    loss_fn: GazeLoss,
    optimizer: torch.optim.Optimizer,
    batch: Mapping[str, Any],
    device: torch.device,
    *,
    autocast: Autocast = contextlib.nullcontext,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    channels_last: bool = False,
    attention_weight: float | None = None,
) -> dict[str, Any]:
    """One optimisation step: forward, :class:`~dermogaze.losses.GazeLoss`, backward, optimiser step.

    Args:
        model: the network in train mode (possibly wrapped).
        loss_fn: the loss.
        optimizer: from :func:`~dermogaze.training.optim.build_optimizer`.
        batch: the (CPU or device) batch.
        device: the compute device.
        autocast: from :func:`dermogaze.runtime.autocast_factory`.
        scaler: an enabled ``GradScaler`` for fp16, else None.
        grad_clip: clip the global gradient norm to this value (None: no clipping).
        channels_last: feed the images in channels-last memory format.
        attention_weight: the λ of the attention supervision in effect (its warm-up,
            :func:`~dermogaze.losses.attention_weight`); None = the loss's own.

    Returns:
        The loss terms (``loss``, ``diag``, ``seg``, ``cls``, ``att`` tensors, ``matching``).
    """
    optimizer.zero_grad(set_to_none=True)  # before the forward pass: the old gradients are not held during it
    batch, out = forward_batch(model, batch, device, channels_last=channels_last, autocast=autocast)
    terms = loss_fn(out, batch, attention=attention_weight)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(terms["loss"]).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        terms["loss"].backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    return terms


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: GazeLoss,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    epoch: int,
    autocast: Autocast = contextlib.nullcontext,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    max_batches: int | None = None,
    channels_last: bool = False,
    lr_scale: Callable[[int], float] | None = None,
    dist: DistInfo = SINGLE_PROCESS,
    progress: bool = True,
    attention_weight: float | None = None,
) -> dict[str, float]:
    """One pass over the training loader (:func:`train_step` per batch).

    Args:
        model: the network (possibly wrapped in ``DistributedDataParallel``), put in train mode here.
        loader: yields the batches of :class:`~dermogaze.data.dataset.DermoscopyDataset`.
        loss_fn, optimizer, device, autocast, scaler, grad_clip, channels_last, attention_weight: as
            :func:`train_step`.
        epoch: 1-based epoch number (messages and progress bar).
        max_batches: stop after this many batches (smoke runs).
        lr_scale: batch index → factor on each group's ``initial_lr``
            (:func:`~dermogaze.training.optim.lr_schedule`); None keeps the rates as they are.
        dist: the process's place in the run; the loss terms are averaged over all ranks.
        progress: show a tqdm bar (rank 0 only).

    Returns:
        Sample-weighted means of the loss terms (``loss``, ``diag``, ``seg``, ``cls``, ``att``).

    Raises:
        DermogazeError: the loss became NaN or infinite.
    """
    model.train()
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    sums = [0.0] * len(LOSS_TERMS)
    count = 0
    bar = tqdm(total=total, desc=f"epoch {epoch} train", disable=not (progress and dist.is_main), dynamic_ncols=True)
    for i, batch in enumerate(loader):
        if i >= total:
            break
        check_interrupt()
        if lr_scale is not None:
            factor = lr_scale(i)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        terms = train_step(
            model, loss_fn, optimizer, batch, device, autocast=autocast, scaler=scaler, grad_clip=grad_clip,
            channels_last=channels_last, attention_weight=attention_weight,
        )
        values = [float(terms[k].detach()) for k in LOSS_TERMS]
        if not math.isfinite(values[0]):
            raise DermogazeError(
                f"training diverged: the loss is {values[0]} at epoch {epoch}, batch {i + 1} "
                "(lower the learning rates, e.g. -o train.lr_attention=1e-3)"
            )
        n = batch["image"].shape[0]
        sums = [s + v * n for s, v in zip(sums, values, strict=True)]
        count += n
        bar.set_postfix({k: f"{v:.4f}" for k, v in zip(LOSS_TERMS, values, strict=True)}, refresh=False)
        bar.update()
    bar.close()
    *sums, count = all_reduce_sum([*sums, float(count)], dist)
    return {k: s / max(count, 1.0) for k, s in zip(LOSS_TERMS, sums, strict=True)}


@dataclass
class InferenceResult:
    """What :func:`run_inference` collects over a split, from every rank.

    Attributes:
        losses: sample-weighted means of the loss terms (empty without a loss function).
        metrics: :meth:`~dermogaze.metrics.accumulator.EvaluationAccumulator.compute` of the whole split.
        accumulator: the merged accumulator (its ``predictions`` are in dataset order).
        explanation: :meth:`~.ExplanationAccumulator.compute` when one was fed, else ``None``.
    """

    losses: dict[str, float]
    metrics: dict[str, Any]
    accumulator: EvaluationAccumulator
    explanation: dict[str, Any] | None = None


@torch.no_grad()
def run_inference(
    model: GazeNet,
    loader: DataLoader,
    *,
    device: torch.device,
    structures: Sequence[str],
    loss_fn: GazeLoss | None = None,
    autocast: Autocast = contextlib.nullcontext,
    channels_last: bool = False,
    with_masks: bool = True,
    sp_features: Sequence[np.ndarray] | None = None,
    threshold: float = 0.5,
    temperature: float = 1.0,
    tta: bool = False,
    dist: DistInfo = SINGLE_PROCESS,
    progress: bool = True,
    desc: str = "eval",
    explanation: ExplanationAccumulator | None = None,
) -> InferenceResult:
    """Evaluate the model over a loader: the loss terms (optional) and every docs/design.md §6 metric.

    Each rank runs its own shard with the *unwrapped* model (no collective inside the loop, so
    shards may differ in length); the loss sums are reduced and the accumulators gathered and
    merged afterwards.

    Args:
        model: the network (not wrapped in DDP); put in eval mode here.
        loader: batches with ``image``, ``label``, ``id``, ``index`` (and what ``loss_fn`` and the
            structure metrics need: ``masks``, ``present``; ``superpixels`` for Task 2).
        device: the compute device.
        structures: structure names in index order.
        loss_fn: if given, the loss terms are averaged over the samples of all ranks.
        autocast: from :func:`dermogaze.runtime.autocast_factory`.
        channels_last: feed the images in channels-last memory format.
        with_masks: the batches' ``masks`` are ground truth (False for a cache without structure
            masks, whose batches carry empty ones): only then are structure metrics computed.
        sp_features: the split's superpixel labels (``SplitArrays.sp_features``), for the Task 2 AUC.
        threshold, temperature: the decision threshold and temperature scaling of the diagnosis
            (:class:`~dermogaze.metrics.accumulator.EvaluationAccumulator`).
        tta: test-time augmentation: the diagnosis also under the 8 symmetries of the square
            (:func:`~dermogaze.data.transforms.dihedral_views`), averaged; structures and the plain
            diagnosis come from the identity view. Eight forward passes per batch.
        dist: the process's place in the run.
        progress: show a tqdm bar (rank 0 only).
        desc: the bar's label.
        explanation: also feed this accumulator of the docs/design.md §6b measures (the forward then keeps the
            :class:`~dermogaze.models.GazeState` the gaze ablation needs).
    """
    model.eval()
    acc = EvaluationAccumulator(structures, threshold=threshold, temperature=temperature)
    sums = [0.0] * len(LOSS_TERMS)
    count = 0
    for batch in tqdm(loader, desc=desc, disable=not (progress and dist.is_main), dynamic_ncols=True):
        check_interrupt()
        if explanation is None:
            batch, out = forward_batch(model, batch, device, channels_last=channels_last, autocast=autocast)
        else:
            batch, out, state = forward_batch_with_state(
                model, batch, device, channels_last=channels_last, autocast=autocast
            )
            gt = {"masks": batch["masks"], "present": batch.get("present")} if with_masks and "masks" in batch else {}
            explanation.update(model, batch["image"], out, state, **gt, autocast=autocast)
        if loss_fn is not None:
            terms = loss_fn(out, batch)
            n = batch["image"].shape[0]
            sums = [s + float(terms[k]) * n for s, k in zip(sums, LOSS_TERMS, strict=True)]
            count += n
        features = [sp_features[int(i)] for i in batch["index"]] if sp_features is not None else None
        truth = batch if with_masks else {k: v for k, v in batch.items() if k not in ("masks", "present")}
        margins = _tta_margins(model, batch["image"], out, channels_last, autocast) if tta else None
        acc.update(out, truth, sp_features=features, tta_margins=margins)
    losses: dict[str, float] = {}
    if loss_fn is not None:
        *sums, count = all_reduce_sum([*sums, float(count)], dist)
        losses = {k: s / max(count, 1.0) for k, s in zip(LOSS_TERMS, sums, strict=True)}
    parts = all_gather(acc, dist)
    merged = parts[0].merge(parts[1:])
    explained = None
    if explanation is not None:
        pieces = all_gather(explanation, dist)
        explained = pieces[0].merge(pieces[1:]).compute()
    return InferenceResult(losses=losses, metrics=merged.compute(), accumulator=merged, explanation=explained)


def _tta_margins(
    model: nn.Module, images: Tensor, out: GazeOutput, channels_last: bool, autocast: Autocast
) -> Tensor:
    """Melanoma log-odds under the 8 views of :func:`dihedral_views` ``(8, B)``; view 0 is ``out``'s."""
    margins = [out.melanoma_margin]
    for view in dihedral_views(images)[1:]:
        if channels_last:
            view = view.contiguous(memory_format=torch.channels_last)
        with autocast():
            margins.append(model(view).float().melanoma_margin)
    return torch.stack(margins)  # (8, B)
