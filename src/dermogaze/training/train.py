"""``train``: a run from a configuration to its folder (the paper's recipe by default, §4.1).

The pieces: :mod:`.distributed` (processes), :mod:`.seeding` (reproducibility), :mod:`.optim`
(Adam, per-group rates, schedules), :mod:`.loop` (step, epoch, evaluation pass) and
:mod:`.checkpoint` (checkpoints and the run folder). Only rank 0 logs and writes files.

Decisions where the paper and docs/design.md are silent:

- **Validation** after every epoch: the loss terms (sample-weighted means), the diagnosis AUC and
  AP and, for decoder variants, the class-aware structure mAP over IoU thresholds (``val_map``),
  computed by the same evaluation pass as ``dermogaze evaluate``. The kept checkpoint
  (``best.pt``) is the epoch of lowest validation loss.
- **Calibration** after every epoch, on that epoch's validation predictions, stored in its
  checkpoint (so ``best.pt`` carries the calibration of its own weights): the temperature of the
  diagnosis (:func:`~dermogaze.metrics.clinical.fit_temperature`), then the decision threshold on the
  calibrated probabilities by the rule ``train.threshold`` (default ``sensitivity@0.89``: the
  largest threshold with 89% validation sensitivity; :func:`~dermogaze.metrics.clinical.choose_threshold`).
  A validation split without both classes cannot choose a rule-based threshold: 0.5 is kept, with
  a warning.
- **Distributed training** (``torchrun``): ``train.batch_size`` is the global batch and must be
  divisible by the number of processes. Loss terms are averaged over the samples of all ranks.
  Batch-norm statistics are per rank unless ``train.sync_bn`` (CUDA, trainable batch norm)
  converts them to ``SyncBatchNorm``. With batch norm off or frozen, a run on N processes follows
  the single-process run with the same global batch and seed up to floating-point rounding (the
  structure losses are batch-level means, so their per-rank average differs slightly).
- **Mixed precision** (``train.amp``): autocast of the forward pass, the context chosen once
  (:func:`~dermogaze.runtime.effective_amp`): bf16 or fp16 on CUDA, fp16 with a ``GradScaler``; bf16 on a
  CPU with native bf16 (float32 on another CPU, with one log line). The weights, gradients and
  optimiser state stay float32, so the checkpoints are those of a float32 run and a run resumes in
  either precision; the loss, the calibration and the validation metrics run in float32.
- **Resume** (``resume=True``): from ``RUN/last.pt``, with its model configuration (another one is
  refused), weights, optimiser state, RNG states of every rank and history; the configuration's
  rates, betas and weight decay apply. A resumed CPU run reproduces the uninterrupted one, also
  after a kill at any instant of an epoch's end (the write order and the repairs are in
  :mod:`.checkpoint`). The network is built without ``model.weights`` (the checkpoint holds every
  weight: no download), and the encoder counts as pretrained, so a learning rate of 0 freezes it.
- **The run folder** is locked by rank 0 for the whole run (``RUN/.lock``): a second ``train`` on it
  is refused with the holder's pid. A fresh run refuses a folder holding a run's files unless
  ``overwrite``.
- **Watched from outside**: ``on_epoch(epoch, row)`` sees each epoch's metrics once its files are
  written; an exception it raises ends the run there (a hyperparameter search's pruner,
  :mod:`dermogaze.experiments.sweep.run`).
- **Refused before any work**: an empty training or validation split. **Stopped**: a run whose
  training or validation loss, or weights, become NaN or infinite ("training diverged"); ``last.pt``
  keeps the previous epoch.
- **What it was trained on**: every checkpoint records the training cache's name, kind (synthetic or real),
  structure set, size and fingerprint (``training_data``, :mod:`dermogaze.data.provenance`).
- **When the run ends** (also a resumed run that had nothing left to train), rank 0 fits the out-of-distribution
  score of ``last.pt`` and ``best.pt`` on the training split, its threshold on the validation split, and stores it
  in their ``ood`` field (:func:`~.ood.fit_run_ood`, :mod:`dermogaze.metrics.ood`); a fit that cannot be made is a
  warning, not a failed run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ..config import Config
from ..data.cache import load_info
from ..data.dataset import DermoscopyDataset
from ..data.provenance import describe, training_collection
from ..errors import DataError, DermogazeError
from ..losses import GazeLoss, attention_weight
from ..metrics.accumulator import EvaluationAccumulator
from ..metrics.clinical import choose_threshold, fit_temperature
from ..models import GazeNet, build_model
from ..runtime import autocast_factory
from .checkpoint import check_structure_set, checkpoint_state, first_nonfinite, load_checkpoint
from .distributed import DistInfo, ShardSampler, all_gather, barrier, cleanup_distributed, setup_distributed
from .loop import run_inference, train_one_epoch
from .ood import fit_run_ood
from .optim import apply_hyperparameters, build_optimizer, lr_schedule
from .run_folder import RunWriter
from .sampling import RepeatFactorSampler, repeat_factors
from .seeding import EpochSeededDataset, get_rng_state, seed_everything, set_rng_state

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Loaders:
    train_set: EpochSeededDataset
    sampler: DistributedSampler | RepeatFactorSampler
    train: DataLoader
    val: DataLoader
    steps_per_epoch: int


def train(
    cfg: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train a model with ``cfg`` and write the run folder (:class:`~.run_folder.RunWriter`).

    Works in a single process and under ``torchrun`` (one process per device; the process group
    is set up from the environment and torn down at the end).

    Args:
        cfg: resolved configuration; ``cfg.data.cache`` must name a prepared cache.
        out_dir: the run folder.
        resume: continue from ``out_dir/last.pt`` (the model section of ``cfg`` must match it).
        overwrite: start afresh even if ``out_dir`` holds a run (its files are replaced).
        progress: show tqdm bars.
        on_epoch: called as ``on_epoch(epoch, row)`` after each epoch's files are written, with the epoch's
            line of ``metrics.jsonl`` (``val_auc``, ``val_map``, ...), on every process (the row is the same on
            each). An exception it raises (e.g. a hyperparameter search's pruning signal) stops the run there
            and reaches the caller; the run folder keeps that epoch (a later ``resume`` continues it).

    Returns:
        Summary: ``run``, ``is_main`` (rank 0), ``epochs`` (completed), ``best_epoch``,
        ``best_val_loss``, ``last``, ``best`` (checkpoint paths), ``history`` (the metrics rows).

    Raises:
        DermogazeError / DataError: a missing or unsuitable cache (an empty training or validation
            split included), an existing run without ``resume``/``overwrite``, a folder locked by
            another run, a checkpoint that does not match ``cfg``, a diverged training (the run
            folder keeps the last good epoch).
    """
    dist = setup_distributed(cfg.train.device)
    run = RunWriter(out_dir)
    try:
        return _train(cfg, run, resume=resume, overwrite=overwrite, progress=progress, dist=dist, on_epoch=on_epoch)
    finally:
        run.unlock()
        cleanup_distributed(dist)


def _train(
    cfg: Config,
    run: RunWriter,
    *,
    resume: bool,
    overwrite: bool,
    progress: bool,
    dist: DistInfo,
    on_epoch: Callable[[int, dict[str, Any]], None] | None,
) -> dict:
    t = cfg.train
    device = dist.device
    _check_config(cfg, dist)
    cache = Path(cfg.data.cache)
    info = load_info(cache)
    _check_data(info, cache, cfg)
    training_data = training_collection(cache, info)
    ckpt = _open_run(cfg, run, resume=resume, overwrite=overwrite, dist=dist)
    seed_everything(t.seed)
    kwargs = _model_kwargs(cfg)
    kwargs["num_structures"] = len(info["structures"])  # the structure classifier follows the data
    if ckpt is not None:
        check_structure_set(ckpt, info, cache)
        kwargs["weights"] = None  # the checkpoint holds every weight: never fetch the pretrained ones again
    model = build_model(cfg.model.name, **kwargs)
    if ckpt is None and model.batch_norm == "frozen" and not cfg.model.weights:
        logger.warning(
            "model %s: batch_norm='frozen' without pretrained weights keeps the VGG batch norms at their initial "
            "statistics (nearly the identity); use -o model.weights=imagenet for the paper's setup", cfg.model.name
        )
    _check_masks(info, cache, cfg, model.needs_masks)
    model.to(device)
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg, pretrained_encoder=True if ckpt is not None else None)
    loss_fn = GazeLoss(cfg.loss, presences=info["presences"], structures=info["structures"]).to(device)
    autocast = autocast_factory(device, t.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=(t.amp == "fp16" and device.type == "cuda"))

    start_epoch, best_val, best_epoch = 0, math.inf, 0
    history: list[dict[str, Any]] = []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        _load_optimizer_state(optimizer, ckpt)
        apply_hyperparameters(optimizer, t)  # the config's rates, betas and decay, not the saved ones
        if ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best_epoch = int(ckpt["epoch"]), int(ckpt["best_epoch"])
        best_val = math.inf if ckpt["best_val_loss"] is None else float(ckpt["best_val_loss"])
        history = run.read_history(start_epoch)
        logger.info("resuming %s after epoch %d (best validation loss %.4f)", run.run, start_epoch, best_val)
        if start_epoch >= t.epochs:
            logger.info("the run already completed %d of %d epochs; raise train.epochs to go on", start_epoch, t.epochs)

    loaders = _make_loaders(cfg, cache, dist)
    net = _wrap(model, cfg, dist)
    if dist.is_main:
        run.start(cfg, history, resume_from=ckpt)
    if ckpt is not None:
        rngs = ckpt["rng"]
        set_rng_state(rngs[dist.rank] if len(rngs) == dist.world_size else rngs[0])
    else:
        seed_everything(t.seed + dist.rank)  # ranks draw different dropout masks
    logger.info(
        "training %s on %s: %d train / %d val images, global batch %d (%d per process x %d), epochs %d-%d",
        cfg.model.name, device, len(loaders.train_set), len(loaders.val.dataset), t.batch_size,
        t.batch_size // dist.world_size, dist.world_size, start_epoch + 1, t.epochs,
    )
    if dist.is_main:
        logger.info("training data: %s", describe(training_data))

    for epoch in range(start_epoch + 1, t.epochs + 1):
        tic = time.perf_counter()
        loaders.sampler.set_epoch(epoch)
        loaders.train_set.set_epoch(epoch)
        lam = attention_weight(cfg.loss, epoch)  # the training loss's λ (warm-up); validation uses the full λ
        try:
            train_terms = train_one_epoch(
                net, loaders.train, loss_fn, optimizer, device=device, epoch=epoch, autocast=autocast, scaler=scaler,
                grad_clip=t.grad_clip, max_batches=t.max_train_batches, channels_last=t.channels_last,
                lr_scale=lr_schedule(t.lr_schedule, epoch, t.epochs, loaders.steps_per_epoch), dist=dist,
                progress=progress, attention_weight=lam,
            )
        except DermogazeError as exc:  # the loss became NaN or infinite
            raise DermogazeError(f"{exc}; {_kept(run, epoch)}") from None
        bad = first_nonfinite(model.state_dict())  # the last update can break the weights after a finite loss
        if bad is not None:
            _diverged(f"the weights are NaN or infinite (first in {bad!r})", epoch, run)
        val = run_inference(
            model, loaders.val, device=device, structures=info["structures"], loss_fn=loss_fn, autocast=autocast,
            channels_last=t.channels_last, dist=dist, progress=progress, desc=f"epoch {epoch} val",
        )
        if not math.isfinite(val.losses["loss"]):
            _diverged(f"the validation loss is {val.losses['loss']}", epoch, run)
        calibration = _calibrate(val.accumulator, t.threshold)
        improved = val.losses["loss"] < best_val
        if improved:
            best_val, best_epoch = val.losses["loss"], epoch
        row = _epoch_row(epoch, train_terms, val.losses, val.metrics, optimizer, improved, time.perf_counter() - tic)
        row.update(temperature=calibration["temperature"], threshold=calibration["threshold"])
        if cfg.loss.attention > 0:
            row["train_attention_weight"] = lam
        rngs = all_gather(get_rng_state(), dist)  # every rank's generators, for an exact resume
        if dist.is_main:
            history.append(row)
            state = checkpoint_state(
                cfg, model, optimizer, scaler, info, epoch=epoch, best_val=_finite_or_none(best_val),
                best_epoch=best_epoch, rngs=rngs, metrics=row, calibration=calibration, training_data=training_data,
            )
            run.save_epoch(state, history, best=improved)
            auc = "n/a" if row["val_auc"] is None else f"{row['val_auc']:.4f}"
            logger.info(
                "epoch %d/%d: train loss %.4f, val loss %.4f, val AUC %s%s (%.1f s)", epoch, t.epochs,
                train_terms["loss"], val.losses["loss"], auc, " *best*" if improved else "", row["time_s"],
            )
        barrier(dist)
        if on_epoch is not None:
            on_epoch(epoch, row)
    if dist.is_main and run.last.is_file():
        fit_run_ood(run.last, run.best, cache, device=device, autocast=autocast, workers=cfg.data.workers,
                    progress=progress)
    barrier(dist)
    return {
        "run": run.run,
        "is_main": dist.is_main,
        "epochs": max(start_epoch, t.epochs),
        "best_epoch": best_epoch,
        "best_val_loss": best_val,
        "last": run.last,
        "best": run.best,
        "history": history,
    }


def _check_config(cfg: Config, dist: DistInfo) -> None:
    """Refuse a configuration that cannot train (the same answer on every rank)."""
    t = cfg.train
    if not cfg.data.cache:
        raise DermogazeError("no training data: pass --data CACHE (a folder written by 'dermogaze data prepare')")
    if t.batch_size % dist.world_size:
        raise DermogazeError(
            f"train.batch_size={t.batch_size} is the global batch and must be divisible by the number of "
            f"processes ({dist.world_size})"
        )
    if t.epochs < 1:
        raise DermogazeError(f"train.epochs must be at least 1, got {t.epochs}")
    choose_threshold(t.threshold, [0, 1], [0.25, 0.75])  # an unknown rule fails before any work


def _open_run(cfg: Config, run: RunWriter, *, resume: bool, overwrite: bool, dist: DistInfo) -> dict | None:
    """Rank 0 locks the run folder and checks it; every rank gets its refusal or the checkpoint to resume from.

    Returns:
        ``last.pt`` when resuming, else None.
    """
    ckpt, refusal = None, None
    if dist.is_main:
        try:
            run.lock()
            if resume:
                ckpt = run.resume_checkpoint(cfg)
            else:
                run.check_fresh(overwrite=overwrite)
        except DermogazeError as exc:
            if not dist.enabled:
                raise
            refusal = exc
    refusals = [r for r in all_gather(None if refusal is None else str(refusal), dist) if r is not None]
    if refusal is not None:
        raise refusal
    if refusals:  # rank 0 refused: every rank stops with its message
        raise DermogazeError(refusals[0])
    if resume and not dist.is_main:
        ckpt = load_checkpoint(run.last)
    return ckpt


def _load_optimizer_state(optimizer: torch.optim.Optimizer, ckpt: dict[str, Any]) -> None:
    """Adam's saved state; another set of trained parameter groups (a learning rate changed to or from 0) is refused."""
    saved = [g.get("name") for g in ckpt["optimizer"]["param_groups"]]
    now = [g["name"] for g in optimizer.param_groups]
    if saved != now:
        raise DermogazeError(
            f"cannot resume {ckpt['path']}: it trained the groups {', '.join(saved)}, the configuration trains "
            f"{', '.join(now)} (a learning rate changed to or from 0); keep the run's learning rates non-zero "
            "where they were"
        )
    optimizer.load_state_dict(ckpt["optimizer"])


def _kept(run: RunWriter, epoch: int) -> str:
    """What the run folder keeps when epoch ``epoch`` fails."""
    if epoch == 1:
        return "no checkpoint was written"
    return f"{run.last} keeps epoch {epoch - 1}"


def _diverged(what: str, epoch: int, run: RunWriter) -> NoReturn:
    """Stop before an epoch with NaN or infinite weights or validation loss is written."""
    raise DermogazeError(
        f"training diverged: {what} after epoch {epoch} (lower the learning rates, e.g. "
        f"-o train.lr_attention=1e-3); {_kept(run, epoch)}"
    )


def _calibrate(acc: EvaluationAccumulator, rule: str) -> dict[str, Any]:
    """Temperature and decision threshold fitted on the validation predictions in ``acc``."""
    known = [k for k, y in enumerate(acc.labels) if y is not None]
    labels = np.array([acc.labels[k] for k in known], dtype=np.int64)
    margins = torch.tensor([acc.margins[k] for k in known], dtype=torch.float32)
    temperature = fit_temperature(margins.double().numpy(), labels)
    probs = torch.sigmoid(margins / temperature).double().numpy()  # as GazeOutput.calibrated_melanoma_prob
    try:
        threshold = choose_threshold(rule, labels, probs)
    except DermogazeError:  # the rule's syntax was checked at the start: the split lacks a class
        threshold = 0.5
        logger.warning("the validation split lacks a diagnosis class: decision threshold 0.5, not %s", rule)
    return {"temperature": float(temperature), "threshold": float(threshold), "threshold_rule": rule}


def _model_kwargs(cfg: Config) -> dict[str, Any]:
    """``build_model`` keyword arguments of a config (every ``ModelConfig`` field but ``name``)."""
    d = dataclasses.asdict(cfg.model)
    d.pop("name")
    return d


def _check_data(info: dict, cache: Path, cfg: Config) -> None:
    """Refuse a cache that cannot feed this configuration: a missing or empty split, images too small."""
    size = int(info["size"])
    if cfg.model.image_size > size:
        fit = size // 32 * 32
        raise DataError(
            f"cache {cache} holds {size} px images, smaller than model.image_size={cfg.model.image_size} "
            f"(prepare it with --size {cfg.model.image_size * 8 // 7} or more"
            + (f", or pass -o model.image_size={fit})" if fit else ")")
        )
    for key, split in (("train_split", cfg.data.train_split), ("val_split", cfg.data.val_split)):
        if split not in info["splits"]:
            raise DataError(f"cache {cache} has no split {split!r} (it holds {', '.join(info['splits']) or 'none'})")
        if int(info["counts"][split]) == 0:
            raise DataError(
                f"cache {cache}: split {split!r} holds no images, so there is nothing to "
                f"{'train on' if key == 'train_split' else 'validate on'}; prepare the cache from a collection "
                f"with images in that split, or choose another with -o data.{key}=SPLIT"
            )


def _check_masks(info: dict, cache: Path, cfg: Config, needs_masks: bool) -> None:
    if not needs_masks and info.get("labelled", {}).get(cfg.data.train_split) == 0:
        raise DataError(
            f"cache {cache} has no diagnosis label in split {cfg.data.train_split!r} (a structure-only collection), so "
            f"the {cfg.model.name!r} variant, which learns the diagnosis alone, has nothing to learn; use a variant "
            "with a structure decoder (deco_gap_3, deco_gap_5, deco_gap_17) or prepare the data with --labels CSV"
        )
    if needs_masks and not info["has_masks"]:
        raise DataError(
            f"cache {cache} has no structure masks (ISIC Part 1/Part 2 missing), but the {cfg.model.name!r} variant "
            "trains a structure decoder on them; use a variant without a decoder (vgg, vgg_gap, vgg_attconvlstm, "
            "vgg_attconvlstm_gap) or data with masks"
        )


def _presence(images: DermoscopyDataset, cache: Path) -> np.ndarray:
    """Bool ``(N, K)``: training image ``i`` holds structure ``k`` (a positive pixel in its cached mask)."""
    masks = images.arrays().masks
    if masks is None:
        raise DataError(
            f"cache {cache} has no structure masks, but train.repeat_threshold > 0 repeats the images of rare "
            "structures; set train.repeat_threshold=0 or use data with masks"
        )
    chunks = (np.asarray(masks[i : i + 64]) for i in range(0, len(masks), 64))  # a few images of the memory map at once
    return np.concatenate([c.reshape(*c.shape[:2], -1).any(-1) for c in chunks])


def _make_loaders(cfg: Config, cache: Path, dist: DistInfo) -> _Loaders:
    """Training loader (``DistributedSampler`` or repeat-factor draws) and validation loader (unpadded shards)."""
    t = cfg.train
    per_rank = t.batch_size // dist.world_size
    images = DermoscopyDataset(
        cache, cfg.data.train_split, train=True, image_size=cfg.model.image_size, augment=cfg.data.augment
    )
    train_set = EpochSeededDataset(images, t.seed)
    val_set = DermoscopyDataset(cache, cfg.data.val_split, train=False, image_size=cfg.model.image_size)
    sampler: DistributedSampler | RepeatFactorSampler
    if t.repeat_threshold > 0:
        factors = repeat_factors(_presence(images, cache), t.repeat_threshold)
        if dist.is_main:  # relative to the least repeated images: for t > 1 every factor exceeds 1
            relative = factors / factors.min()
            logger.info(
                "repeat-factor sampling (t = %g): %d of %d training images drawn more often than the rest, up to "
                "%.2f times as often",
                t.repeat_threshold, int((relative > 1).sum()), len(factors), float(relative.max()),
            )
        sampler = RepeatFactorSampler(factors, num_replicas=dist.world_size, rank=dist.rank, seed=t.seed)
    else:
        sampler = DistributedSampler(
            train_set, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=t.seed, drop_last=False
        )
    loader_kw: dict[str, Any] = dict(
        num_workers=cfg.data.workers,
        pin_memory=cfg.data.pin_memory and dist.device.type == "cuda",
        persistent_workers=False,  # EpochSeededDataset.set_epoch must reach the workers
    )
    train_loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler, **loader_kw)
    val_loader = DataLoader(
        val_set, batch_size=per_rank, sampler=ShardSampler(len(val_set), dist.rank, dist.world_size), **loader_kw
    )
    steps = len(train_loader) if t.max_train_batches is None else min(len(train_loader), t.max_train_batches)
    lr_schedule(t.lr_schedule, 1, t.epochs, steps)  # an unknown schedule fails before any work
    return _Loaders(train_set, sampler, train_loader, val_loader, steps)


def _wrap(model: GazeNet, cfg: Config, dist: DistInfo) -> nn.Module:
    """The module the training step calls: compiled and/or in ``DistributedDataParallel`` as configured."""
    net: nn.Module = torch.compile(model) if cfg.train.compile else model
    if dist.enabled:
        if cfg.train.sync_bn and dist.device.type == "cuda" and model.batch_norm == "on":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # shares the parameters: the optimiser is unchanged
        device_ids = [dist.device.index] if dist.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
    return net


def _epoch_row(
    epoch: int,
    train_terms: dict[str, float],
    val_losses: dict[str, float],
    val_metrics: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    improved: bool,
    seconds: float,
) -> dict[str, Any]:
    """The epoch's line of ``metrics.jsonl``."""
    diagnosis = val_metrics["diagnosis"]
    row: dict[str, Any] = {"epoch": epoch}
    row.update({f"train_{k}": _finite_or_none(v) for k, v in train_terms.items()})
    row.update({f"val_{k}": _finite_or_none(v) for k, v in val_losses.items()})
    row.update(val_auc=_finite_or_none(diagnosis["auc"]), val_ap=_finite_or_none(diagnosis["ap"]))
    structures = val_metrics.get("structures")
    if structures and structures["n_images"] > 0:
        row["val_map"] = structures["map_iou_class_aware"]  # mAP@IoU[.50:.95], class-aware
    row.update({f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups})  # at the epoch's last step
    row.update(best=improved, time_s=round(seconds, 3))
    return row


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
