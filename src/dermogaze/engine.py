"""Training and evaluation loops, checkpoints and distributed training (SPEC §5-6).

The paper's recipe (§4.1) is the default: Adam with betas (0.92, 0.96) and weight decay 1e-6,
one learning rate per module (encoder 0, attentive ConvLSTM 1e-2, both branches 1e-4, through
``model.parameter_groups()``), batch 8, 20 epochs, keeping the checkpoint with the lowest
validation loss.

Run folder written by :func:`train` (only rank 0 writes)::

    RUN/config.yaml      the resolved configuration
    RUN/metrics.jsonl    one JSON line per epoch: train/validation loss terms, validation AUC/AP/mAP
    RUN/last.pt          checkpoint after the latest epoch (continue with ``--resume RUN``)
    RUN/best.pt          checkpoint of the epoch with the lowest validation loss (evaluate/explain it)

Decisions where the paper and SPEC are silent:

- **Frozen modules.** A parameter group whose learning rate is 0 is left out of the optimiser and
  frozen (the encoder through ``model.freeze_encoder()``: no gradient, batch-norm statistics
  fixed, no backward pass through it; the same weights as an lr of 0, at a fraction of the cost).
  Without pretrained encoder weights (``model.weights`` unset) and ``train.lr_encoder == 0``,
  training refuses to start, because a frozen random encoder cannot learn (SPEC §5); the
  message suggests ``-o train.lr_encoder=1e-4`` (an error rather than a silent change of the
  recipe).
- **Reproducibility.** The order of the training samples is a function of ``(seed, epoch)`` only
  (``DistributedSampler`` with ``set_epoch``, also in a single process), and the random training
  transforms of sample ``i`` in epoch ``e`` are drawn from a generator seeded with
  ``(seed, e, i)`` (:class:`EpochSeededDataset`). So the batches do not depend on the number of
  loader workers, on the number of processes, or on where a run was interrupted; together with
  the torch/numpy/python RNG states stored in the checkpoint, a resumed CPU run reproduces an
  uninterrupted one exactly.
- **Distributed training** (``torchrun``): one process per device, ``gloo`` on CPU and ``nccl``
  on GPUs. ``train.batch_size`` is the *global* batch; each rank loads
  ``batch_size / world_size`` samples (it must divide). ``DistributedSampler`` pads the training
  shards to equal length (a few samples repeat in an epoch whose size does not divide the world
  size); validation shards are strided without padding and predictions are gathered from all
  ranks (de-duplicated by sample index) before the AUC. Loss terms are averaged over samples
  across ranks. BatchNorm statistics are per rank unless ``train.sync_bn`` (CUDA, trainable batch
  norm ``model.batch_norm="on"``) converts them to ``SyncBatchNorm``. With batch norm off or
  frozen, a run on N processes follows the single-process run with the same global batch and
  seed up to floating-point rounding (the diagnosis loss is a per-sample mean; the structure
  losses are batch-level means, so their per-rank average differs slightly from the global one).
- **Mixed precision** (``train.amp``): autocast on CUDA only (bf16 or fp16, the context chosen
  once); fp16 uses a ``GradScaler``. On CPU ``amp`` is ignored with a warning. The loss always
  runs in float32.
- **Learning-rate schedule.** ``train.lr_schedule="constant"`` is the paper's; ``"cosine"``
  (used by the demo) anneals every group's rate per step from its base value to 0. The factor
  depends only on the position in the run, so resume needs no scheduler state. The rates of the
  epoch's last step are logged as ``lr_<group>`` in ``metrics.jsonl``. On resume the rates,
  betas and weight decay come from the configuration, not from the saved optimiser state.
- **Validation** metrics during training are the loss terms (sample-weighted means), the
  diagnosis AUC and AP and, for decoder variants, the class-aware structure mAP over IoU
  thresholds (``val_map``); the full SPEC §6 evaluation is :func:`evaluate_checkpoint`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from . import __version__
from .config import Config, save_config
from .errors import DataError, DermogazeError
from .models.output import GazeOutput
from .structures import STRUCTURES

logger = logging.getLogger(__name__)

#: Marks a file as a dermogaze checkpoint; bumped when the layout changes incompatibly.
CHECKPOINT_FORMAT = "dermogaze-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
#: Keys every checkpoint holds (interfaces.md).
CHECKPOINT_KEYS = (
    "format",
    "version",
    "config",
    "model",
    "optimizer",
    "scaler",
    "epoch",
    "best_val_loss",
    "mean",
    "std",
    "structures",
    "image_size",
    "rng",
    "variant",
)
#: Loss terms logged per epoch (keys of :class:`dermogaze.losses.GazeLoss`'s output).
LOSS_TERMS = ("loss", "diag", "seg", "cls")


# --------------------------------------------------------------------------------------------
# Devices, precision and processes
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        rank: global rank (0 in a single process).
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        device: the device this process computes on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` → the local GPU when CUDA is available, else the CPU.

    Raises:
        DermogazeError: ``"cuda"`` requested but no GPU is visible, or an unknown name.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DermogazeError(f"device {name!r} requested but no CUDA GPU is visible (use --device cpu)")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    if name == "cpu":
        return torch.device("cpu")
    raise DermogazeError(f"unknown device {name!r}: expected auto, cpu or cuda")


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by ``torchrun``, also across nodes);
    with ``WORLD_SIZE`` unset or 1 this is a single process. The backend is ``nccl`` on GPUs and
    ``gloo`` on CPU. Ranks other than 0 only log warnings.

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        The process's :class:`DistInfo`.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=resolve_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not torch_dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend=backend, init_method="env://")
        logger.info("process group: backend %s, world size %d", backend, world)
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def cleanup_distributed(dist: DistInfo) -> None:
    """Leave the process group joined by :func:`setup_distributed` (no-op in a single process)."""
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def autocast_factory(
    device: torch.device, amp: str, *, cpu: bool = False
) -> Callable[[], contextlib.AbstractContextManager]:
    """One autocast context, chosen once (timm style).

    Args:
        device: the compute device.
        amp: ``"off"``, ``"bf16"`` or ``"fp16"``. Mixed precision is used on CUDA only; on
            another device it is ignored with a warning, unless ``cpu``.
        cpu: allow autocast on the CPU too (the benchmark measures it; bf16 needs AVX-512 BF16 to be
            fast, fp16 is mostly slow there).

    Returns:
        A zero-argument callable returning a context manager.
    """
    if amp not in ("off", "bf16", "fp16"):
        raise DermogazeError(f"unknown train.amp {amp!r}: expected off, bf16 or fp16")
    if amp == "off":
        return contextlib.nullcontext
    if device.type != "cuda" and not cpu:
        logger.warning("mixed precision (--amp %s) is for CUDA GPUs; running in float32 on %s", amp, device)
        return contextlib.nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return functools.partial(torch.autocast, device_type=device.type, dtype=dtype)


def _all_reduce_sum(values: list[float], dist: DistInfo) -> list[float]:
    """Sum a list of floats over all ranks (float64)."""
    if not dist.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    torch_dist.all_reduce(t)
    return t.tolist()


def _all_gather(obj: Any, dist: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (a picklable object), in rank order."""
    if not dist.enabled:
        return [obj]
    out: list[Any] = [None] * dist.world_size
    torch_dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------------------------
# Randomness
# --------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """The global RNG states of torch (CPU and CUDA), numpy and python.

    Stored with tensors and plain Python values only, so a checkpoint loads with
    ``torch.load(weights_only=True)``.
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states returned by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


@contextlib.contextmanager
def _seeded_rng(seed: int) -> Iterator[None]:
    """Run a block with torch/numpy/python global RNGs seeded to ``seed``; restore them after."""
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


class EpochSeededDataset(Dataset):
    """Makes the random transforms of sample ``i`` in epoch ``e`` a function of ``(seed, e, i)``.

    Wraps a training dataset whose ``__getitem__`` draws its augmentation from the global
    torch/numpy/python generators. Each item is produced with those generators seeded from
    ``(seed, epoch, index)`` (and restored afterwards), so the augmentations do not depend on the
    number of loader workers, on the number of processes, or on a resume. Call
    :meth:`set_epoch` before each epoch (loader workers must not be persistent).

    Args:
        dataset: the dataset to wrap (its items are returned unchanged otherwise).
        seed: the run's seed.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        seed = int(np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(1)[0])
        with _seeded_rng(seed):
            return self.dataset[index]


class ShardSampler(Sampler[int]):
    """Strided, unpadded shard ``range(rank, n, world_size)`` for evaluation.

    Unlike ``DistributedSampler`` it repeats no sample, so gathered predictions need no
    de-duplication; ranks may get one sample more or less than others.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write a checkpoint atomically: a temporary file in the same folder, then ``os.replace``.

    An interrupted write never leaves a truncated ``path`` behind (the previous file stays).

    Args:
        path: destination (``last.pt`` / ``best.pt``).
        state: the checkpoint dict (see :data:`CHECKPOINT_KEYS`).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``torch.load(weights_only=True)``).

    Args:
        path: the ``.pt`` file.
        map_location: where to put its tensors.

    Returns:
        The checkpoint dict, plus ``path`` (the file it was read from).

    Raises:
        DermogazeError: the file is missing, truncated/corrupt, holds objects a weights-only load
            refuses, or is not a dermogaze checkpoint — the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DermogazeError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise DermogazeError(
                f"{path} is not a dermogaze checkpoint (it holds Python objects a safe load refuses)"
            ) from None
        raise DermogazeError(f"cannot read checkpoint {path}: truncated or corrupt file ({reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise DermogazeError(
            f"{path} is not a dermogaze checkpoint (expected a file written by 'dermogaze train', "
            "such as RUN/best.pt)"
        )
    if ckpt.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
        raise DermogazeError(
            f"{path} was written by a newer dermogaze (checkpoint format {ckpt.get('format_version')}, this is "
            f"{__version__} reading format {CHECKPOINT_FORMAT_VERSION}); upgrade dermogaze"
        )
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise DermogazeError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    ckpt["path"] = str(path)  # where it was read from (for messages; not part of the saved file)
    return ckpt


def model_from_checkpoint(ckpt: Mapping[str, Any], *, variant: str | None = None) -> nn.Module:
    """Rebuild the network stored in a checkpoint and load its weights (no pretrained download).

    Args:
        ckpt: a dict from :func:`load_checkpoint`.
        variant: if given, the variant the caller expects; a checkpoint of another variant is an
            error.

    Returns:
        The model on the CPU, in eval mode.

    Raises:
        DermogazeError: another variant than expected, or weights that do not fit the variant the
            checkpoint names (e.g. a file edited or assembled from two runs).
    """
    from .models import build_model

    name = ckpt["variant"]
    where = ckpt.get("path", "the checkpoint")
    if variant is not None and variant != name:
        raise DermogazeError(f"{where} holds a {name!r} model, not {variant!r}")
    kwargs = dict(ckpt.get("model_kwargs") or _model_overrides(Config.from_dict(ckpt["config"])))
    kwargs["weights"] = None  # the checkpoint holds every weight: never fetch ImageNet ones
    try:
        model = build_model(name, **kwargs)
    except DermogazeError:
        raise
    except (KeyError, ValueError, TypeError) as exc:
        raise DermogazeError(f"cannot rebuild the {name!r} model of {where}: {exc}") from None
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) or first[0]
        raise DermogazeError(
            f"the weights in {where} do not fit its {name!r} model (a checkpoint of another variant or width?): "
            f"{detail[:300]}"
        ) from None
    model.eval()
    return model


def _model_overrides(cfg: Config) -> dict[str, Any]:
    """``build_model`` keyword arguments of a config (every ``ModelConfig`` field but ``name``)."""
    d = dataclasses.asdict(cfg.model)
    d.pop("name")
    return d


def _plain(value: Any) -> Any:
    """Tensors, numbers, strings, lists and dicts only (what a weights-only load accepts)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------------------------
# Building blocks of a run
# --------------------------------------------------------------------------------------------
def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Adam:
    """Adam over ``model.parameter_groups()`` with the paper's per-module learning rates.

    Groups with a learning rate of 0 are frozen and left out: the encoder through
    ``model.freeze_encoder()`` (no gradient, batch-norm statistics fixed, no backward pass through
    it), any other group with ``requires_grad=False``.

    Raises:
        DermogazeError: a frozen random encoder (see the module docstring), or nothing to train.
    """
    t = cfg.train
    lrs = {"encoder": t.lr_encoder, "attention": t.lr_attention, "branches": t.lr_branches}
    if t.lr_encoder == 0 and not cfg.model.weights:
        raise DermogazeError(
            "model.weights is not set, so the encoder starts from random weights and must train (lr > 0): "
            "pass -o train.lr_encoder=1e-4, or -o model.weights=imagenet (or a path to vgg16_bn weights) "
            "to keep the paper's frozen encoder"
        )
    if t.lr_encoder == 0 and hasattr(model, "freeze_encoder"):
        model.freeze_encoder(True)  # no gradient, BN statistics fixed, no backward through it
    groups = []
    for name, params in model.parameter_groups().items():
        if name not in lrs:
            raise DermogazeError(f"model parameter group {name!r} has no learning rate (expected {', '.join(lrs)})")
        params = [p for p in params if p.requires_grad]
        if not params:
            continue
        if lrs[name] == 0:
            for p in params:
                p.requires_grad_(False)
            logger.info("%s frozen (lr 0): %d tensors", name, len(params))
            continue
        groups.append({"params": params, "lr": lrs[name], "initial_lr": lrs[name], "name": name})
    if not groups:
        raise DermogazeError("every learning rate is 0: nothing to train")
    return torch.optim.Adam(groups, betas=tuple(t.betas), weight_decay=t.weight_decay)


#: Learning-rate schedules: factor applied to every group's base rate at training progress p ∈ [0, 1).
LR_SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda p: 1.0,  # the paper's recipe
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),  # from the base rates down to 0
}


def lr_schedule(name: str, epoch: int, epochs: int, steps: int) -> Callable[[int], float]:
    """Factor on the base learning rates for batch ``i`` of ``epoch`` (1-based) of ``epochs``.

    The factor is a function of the position in the run only (no scheduler state), so a resumed run
    follows the same schedule; extending ``train.epochs`` on resume stretches a cosine schedule
    from that point on.

    Args:
        name: a key of :data:`LR_SCHEDULES`.
        epoch: the current epoch, 1-based.
        epochs: total epochs of the run.
        steps: optimiser steps per epoch.

    Raises:
        DermogazeError: unknown schedule.
    """
    if name not in LR_SCHEDULES:
        raise DermogazeError(f"unknown train.lr_schedule {name!r}: expected one of {', '.join(LR_SCHEDULES)}")
    fn = LR_SCHEDULES[name]
    total = max(epochs * steps, 1)
    return lambda i: fn(((epoch - 1) * steps + i) / total)


def _apply_hyperparameters(optimizer: torch.optim.Optimizer, cfg: Config) -> None:
    """Set each group's base rate, betas and weight decay from ``cfg`` (after loading a saved state)."""
    t = cfg.train
    lrs = {"encoder": t.lr_encoder, "attention": t.lr_attention, "branches": t.lr_branches}
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = lrs[group["name"]]
        group["betas"] = tuple(t.betas)
        group["weight_decay"] = t.weight_decay


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v for k, v in batch.items()}


def forward_batch(
    model: nn.Module, batch: Mapping[str, Any], device: torch.device, channels_last: bool, autocast: Callable
) -> tuple[dict[str, Any], GazeOutput]:
    """Move ``batch`` to ``device`` and run the model on its images; the outputs in float32."""
    batch = _to_device(batch, device)
    images = batch["image"]  # (B, 3, H, W)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast():
        out = model(images)
    return batch, out.float()


def _finite_or_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: Callable[[GazeOutput, Mapping[str, Any]], Mapping[str, Any]],
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    epoch: int,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    max_batches: int | None = None,
    channels_last: bool = False,
    lr_scale: Callable[[int], float] | None = None,
    dist: DistInfo = DistInfo(),
    progress: bool = True,
) -> dict[str, float]:
    """One pass over the training loader.

    Args:
        model: the network (possibly wrapped in ``DistributedDataParallel``), in train mode here.
        loader: yields the batches of :class:`~dermogaze.data.dataset.DermoscopyDataset`.
        loss_fn: :class:`~dermogaze.losses.GazeLoss`.
        optimizer: from :func:`build_optimizer`.
        device: compute device.
        epoch: 1-based epoch number (progress bar only).
        autocast: from :func:`autocast_factory`.
        scaler: an enabled ``GradScaler`` for fp16, else None.
        grad_clip: clip the global gradient norm to this value (None: no clipping).
        max_batches: stop after this many batches (smoke runs).
        channels_last: feed images in channels-last memory format.
        lr_scale: batch index → factor on each group's ``initial_lr`` (see :func:`lr_schedule`);
            None keeps the rates as they are.
        dist: the process's place in the run; loss terms are averaged over all ranks.
        progress: show a tqdm bar (rank 0 only).

    Returns:
        Sample-weighted means of the loss terms (``loss``, ``diag``, ``seg``, ``cls``).

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
        batch, out = forward_batch(model, batch, device, channels_last, autocast)
        terms = loss_fn(out, batch)
        loss = terms["loss"]
        if lr_scale is not None:
            factor = lr_scale(i)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
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
    *sums, count = _all_reduce_sum([*sums, float(count)], dist)
    return {k: s / max(count, 1.0) for k, s in zip(LOSS_TERMS, sums, strict=True)}


@dataclass
class InferenceResult:
    """What :func:`run_inference` collects over a split (gathered from every rank).

    Attributes:
        losses: sample-weighted means of the loss terms (empty without a loss function).
        indices: dataset indices ``(N,)``, sorted.
        ids: image ids, in the order of ``indices``.
        probs: melanoma probabilities ``(N,)``.
        labels: diagnosis labels ``(N,)`` (1 = melanoma).
        map_iou: per-image class-aware structure mAP over IoU thresholds ``(N,)`` (NaN for images
            without ground-truth structures, or when not computed).
    """

    losses: dict[str, float]
    indices: np.ndarray
    ids: list[str]
    probs: np.ndarray
    labels: np.ndarray
    map_iou: np.ndarray


@torch.no_grad()
def run_inference(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device,
    loss_fn: Callable[[GazeOutput, Mapping[str, Any]], Mapping[str, Any]] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    channels_last: bool = False,
    on_batch: Callable[[GazeOutput, Mapping[str, Any]], None] | None = None,
    structure_map: bool = False,
    dist: DistInfo = DistInfo(),
    progress: bool = True,
    desc: str = "eval",
) -> InferenceResult:
    """Run the model over a loader in eval mode, optionally computing the loss terms.

    Each rank runs its own shard with the *unwrapped* model (no collective inside the loop, so
    shards may differ in length); the per-sample predictions are then gathered from every rank
    and de-duplicated by dataset index.

    Args:
        model: the network (not wrapped in DDP).
        loader: batches with ``image``, ``label``, ``id``, ``index`` (and what ``loss_fn`` needs).
        device: compute device.
        loss_fn: if given, loss terms are averaged over the samples of all ranks.
        autocast: from :func:`autocast_factory`.
        channels_last: feed images in channels-last memory format.
        on_batch: called with the float32 outputs and the batch (e.g. to feed an
            :class:`~dermogaze.metrics.EvaluationAccumulator`), on this rank's batches only.
        structure_map: compute each image's class-aware mAP over IoU thresholds
            (:func:`dermogaze.metrics.map_iou`) for decoder variants, to gather with the predictions.
        dist: the process's place in the run.
        progress: show a tqdm bar (rank 0 only).
        desc: the bar's label.

    Returns:
        An :class:`InferenceResult` holding every sample of the split.
    """
    model.eval()
    sums = [0.0] * len(LOSS_TERMS)
    count = 0
    indices: list[int] = []
    ids: list[str] = []
    probs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    maps: list[float] = []
    for batch in tqdm(loader, desc=desc, disable=not (progress and dist.is_main), dynamic_ncols=True):
        batch, out = forward_batch(model, batch, device, channels_last, autocast)
        n = batch["image"].shape[0]
        if loss_fn is not None:
            terms = loss_fn(out, batch)
            sums = [s + float(terms[k]) * n for s, k in zip(sums, LOSS_TERMS, strict=True)]
            count += n
        if on_batch is not None:
            on_batch(out, batch)
        maps.extend(_structure_map(out, batch) if structure_map else [math.nan] * n)
        indices.extend(int(i) for i in batch["index"])
        ids.extend(batch["id"])
        probs.append(out.melanoma_prob.cpu().numpy())
        labels.append(batch["label"].cpu().numpy())
    losses: dict[str, float] = {}
    if loss_fn is not None:
        *sums, count = _all_reduce_sum([*sums, float(count)], dist)
        losses = {k: s / max(count, 1.0) for k, s in zip(LOSS_TERMS, sums, strict=True)}
    local = (
        indices,
        ids,
        np.concatenate(probs) if probs else np.zeros(0, np.float32),
        np.concatenate(labels) if labels else np.zeros(0, np.int64),
        np.asarray(maps, dtype=np.float64),
    )
    parts = _all_gather(local, dist)
    all_idx = np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts])
    all_ids = [i for p in parts for i in p[1]]
    all_probs = np.concatenate([p[2] for p in parts])
    all_labels = np.concatenate([p[3] for p in parts])
    all_maps = np.concatenate([p[4] for p in parts])
    order_idx, first = np.unique(all_idx, return_index=True)  # sorted, duplicates dropped
    return InferenceResult(
        losses=losses,
        indices=order_idx,
        ids=[all_ids[j] for j in first],
        probs=all_probs[first].astype(np.float64),
        labels=all_labels[first].astype(np.int64),
        map_iou=all_maps[first],
    )


def _structure_map(out: GazeOutput, batch: Mapping[str, Any]) -> list[float]:
    """Per-image class-aware mAP@IoU of a batch (NaN without decoder or without GT structures)."""
    from .metrics import map_iou

    n = out.logits.shape[0]
    if out.masks is None or out.structure_logits is None or "present" not in batch:
        return [math.nan] * n
    masks = out.masks.cpu().numpy()  # (B, T, H, W)
    classes = out.structure_logits.argmax(-1).cpu().numpy()  # (B, T)
    gt = batch["masks"].cpu().numpy() > 0.5  # (B, 6, H, W)
    present = batch["present"].cpu().numpy().astype(bool)  # (B, 6)
    return [map_iou(gt[b], present[b], masks[b], classes[b]) if present[b].any() else math.nan for b in range(n)]


def diagnosis_scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """Validation AUC and AP of the melanoma probability (None when only one class is present)."""
    from .metrics import diagnosis_metrics

    d = diagnosis_metrics(labels, probs)
    return {"auc": _finite_or_none(d["auc"]), "ap": _finite_or_none(d["ap"])}


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def _check_data_for_model(info: Mapping[str, Any], cache: str | Path, cfg: Config, needs_masks: bool) -> None:
    size = int(info["size"])
    if cfg.model.image_size > size:
        fit = size // 32 * 32
        raise DataError(
            f"cache {cache} holds {size} px images, smaller than model.image_size={cfg.model.image_size} "
            f"(prepare it with --size {cfg.model.image_size * 8 // 7} or more"
            + (f", or pass -o model.image_size={fit})" if fit else ")")
        )
    if needs_masks and not info.get("has_masks", False):
        raise DataError(
            f"cache {cache} has no structure masks (ISIC Part 1/Part 2 missing), but the {cfg.model.name!r} variant "
            "trains a structure decoder on them; use a variant without a decoder (vgg, vgg_gap, vgg_attconvlstm, "
            "vgg_attconvlstm_gap) or data with masks"
        )
    for split in (cfg.data.train_split, cfg.data.val_split):
        if split not in info.get("splits", []):
            raise DataError(
                f"cache {cache} has no split {split!r} (it holds {', '.join(info.get('splits', [])) or 'none'})"
            )


def _read_history(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_history(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def train(
    cfg: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a model with ``cfg`` and write the run folder (see the module docstring).

    Works in a single process and under ``torchrun`` (one process per device; the process group
    is set up from the environment and torn down at the end).

    Args:
        cfg: resolved configuration; ``cfg.data.cache`` must name a prepared cache.
        out_dir: the run folder.
        resume: continue from ``out_dir/last.pt`` (the model section of ``cfg`` must match it).
        overwrite: start afresh even if ``out_dir`` holds a run (its files are replaced).
        progress: show tqdm bars.

    Returns:
        Summary: ``run``, ``is_main`` (rank 0), ``epochs`` (completed), ``best_epoch``,
        ``best_val_loss``, ``last``, ``best`` (checkpoint paths), ``history`` (the metrics rows).

    Raises:
        DermogazeError / DataError: a missing or unsuitable cache, an existing run without
            ``resume``/``overwrite``, a checkpoint that does not match ``cfg``.
    """
    dist = setup_distributed(cfg.train.device)
    try:
        return _train(cfg, Path(out_dir), resume=resume, overwrite=overwrite, progress=progress, dist=dist)
    finally:
        cleanup_distributed(dist)


def _train(cfg: Config, out: Path, *, resume: bool, overwrite: bool, progress: bool, dist: DistInfo) -> dict[str, Any]:
    from .data.cache import load_info
    from .data.dataset import DermoscopyDataset
    from .losses import GazeLoss
    from .models import build_model

    t = cfg.train
    device = dist.device
    if not cfg.data.cache:
        raise DermogazeError("no training data: pass --data CACHE (a folder written by 'dermogaze data prepare')")
    if t.batch_size % dist.world_size:
        raise DermogazeError(
            f"train.batch_size={t.batch_size} is the global batch and must be divisible by the number of "
            f"processes ({dist.world_size})"
        )
    if t.epochs < 1:
        raise DermogazeError(f"train.epochs must be at least 1, got {t.epochs}")
    last_path, best_path, metrics_path = out / "last.pt", out / "best.pt", out / "metrics.jsonl"
    ckpt: dict[str, Any] | None = None
    if resume:
        ckpt = load_checkpoint(last_path)
        if ckpt["config"]["model"] != cfg.to_dict()["model"]:
            raise DermogazeError(
                f"cannot resume {last_path}: its model configuration {ckpt['config']['model']} differs from the "
                f"requested {cfg.to_dict()['model']}"
            )
    elif last_path.exists() and not overwrite:
        raise DermogazeError(
            f"{out} already holds a training run ({last_path.name}); continue it with --resume {out} "
            "or choose another --out"
        )

    cache = Path(cfg.data.cache)
    info = load_info(cache)
    seed_everything(t.seed)
    model = build_model(cfg.model.name, **_model_overrides(cfg))
    _check_data_for_model(info, cache, cfg, bool(getattr(model, "needs_masks", False)))
    model.to(device)
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    loss_fn = GazeLoss(cfg.loss, presences=info.get("presences")).to(device)
    autocast = autocast_factory(device, t.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=(t.amp == "fp16" and device.type == "cuda"))

    start_epoch, best_val, best_epoch = 0, math.inf, 0
    history: list[dict[str, Any]] = []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _apply_hyperparameters(optimizer, cfg)  # the config's rates, betas and decay, not the saved ones
        if ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch = int(ckpt["epoch"])
        best_val = float(ckpt["best_val_loss"]) if ckpt["best_val_loss"] is not None else math.inf
        best_epoch = int(ckpt.get("best_epoch", 0))
        history = [r for r in _read_history(metrics_path) if r["epoch"] <= start_epoch]
        logger.info("resuming %s after epoch %d (best validation loss %.4f)", out, start_epoch, best_val)
        if start_epoch >= t.epochs:
            logger.info("the run already completed %d of %d epochs; raise train.epochs to go on", start_epoch, t.epochs)

    # Data: per-rank batch = global batch / world size.
    per_rank = t.batch_size // dist.world_size
    train_set = EpochSeededDataset(
        DermoscopyDataset(cache, cfg.data.train_split, train=True, image_size=cfg.model.image_size), t.seed
    )
    val_set = DermoscopyDataset(cache, cfg.data.val_split, train=False, image_size=cfg.model.image_size)
    sampler = DistributedSampler(
        train_set, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=t.seed, drop_last=False
    )
    loader_kw = dict(
        num_workers=cfg.data.workers,
        pin_memory=cfg.data.pin_memory and device.type == "cuda",
        persistent_workers=False,  # EpochSeededDataset.set_epoch must reach the workers
    )
    train_loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler, **loader_kw)
    val_loader = DataLoader(
        val_set, batch_size=per_rank, sampler=ShardSampler(len(val_set), dist.rank, dist.world_size), **loader_kw
    )

    steps_per_epoch = len(train_loader) if t.max_train_batches is None else min(len(train_loader), t.max_train_batches)
    lr_schedule(t.lr_schedule, 1, t.epochs, steps_per_epoch)  # an unknown schedule fails before any work

    net: nn.Module = model
    if t.compile:
        net = torch.compile(net)
    if dist.enabled:
        if t.sync_bn and device.type == "cuda" and getattr(model, "init_kwargs", {}).get("batch_norm") == "on":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # shares the parameters: the optimiser is unchanged
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )

    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        if not resume:
            for stale in (metrics_path, best_path):
                stale.unlink(missing_ok=True)
        _write_history(metrics_path, history)
    if ckpt is not None:
        rngs = ckpt["rng"]
        set_rng_state(rngs[dist.rank] if len(rngs) == dist.world_size else rngs[0])
    else:
        seed_everything(t.seed + dist.rank)  # ranks draw different dropout masks
    logger.info(
        "training %s on %s: %d train / %d val images, global batch %d (%d per process x %d), epochs %d-%d",
        cfg.model.name, device, len(train_set), len(val_set), t.batch_size, per_rank, dist.world_size,
        start_epoch + 1, t.epochs,
    )  # fmt: skip

    for epoch in range(start_epoch + 1, t.epochs + 1):
        tic = time.perf_counter()
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        train_terms = train_one_epoch(
            net, train_loader, loss_fn, optimizer, device=device, epoch=epoch, autocast=autocast, scaler=scaler,
            grad_clip=t.grad_clip, max_batches=t.max_train_batches, channels_last=t.channels_last,
            lr_scale=lr_schedule(t.lr_schedule, epoch, t.epochs, steps_per_epoch), dist=dist, progress=progress,
        )  # fmt: skip
        val = run_inference(
            model, val_loader, device=device, loss_fn=loss_fn, autocast=autocast, channels_last=t.channels_last,
            structure_map=True, dist=dist, progress=progress, desc=f"epoch {epoch} val",
        )  # fmt: skip
        scores = diagnosis_scores(val.probs, val.labels)
        val_loss = val.losses["loss"]
        improved = val_loss < best_val
        if improved:
            best_val, best_epoch = val_loss, epoch
        row: dict[str, Any] = {"epoch": epoch}
        row.update({f"train_{k}": _finite_or_none(v) for k, v in train_terms.items()})
        row.update({f"val_{k}": _finite_or_none(v) for k, v in val.losses.items()})
        row.update({f"val_{k}": v for k, v in scores.items()})
        if not np.all(np.isnan(val.map_iou)):
            row["val_map"] = float(np.nanmean(val.map_iou))  # class-aware mAP@IoU[.50:.95]
        row.update({f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups})  # at the epoch's last step
        row.update({"best": improved, "time_s": round(time.perf_counter() - tic, 3)})
        rngs = _all_gather(get_rng_state(), dist)  # every rank's generators, for an exact resume
        if dist.is_main:
            history.append(row)
            _write_history(metrics_path, history)
            state = _checkpoint_state(
                cfg, model, optimizer, scaler, info, epoch=epoch, best_val=best_val, best_epoch=best_epoch, rngs=rngs,
                metrics=row,
            )  # fmt: skip
            save_checkpoint(last_path, state)
            if improved:
                _copy_atomic(last_path, best_path)
            auc = "n/a" if scores["auc"] is None else f"{scores['auc']:.4f}"
            logger.info(
                "epoch %d/%d: train loss %.4f, val loss %.4f, val AUC %s%s (%.1f s)",
                epoch, t.epochs, train_terms["loss"], val_loss, auc, " *best*" if improved else "", row["time_s"],
            )  # fmt: skip
        if dist.enabled:
            torch_dist.barrier()
    return {
        "run": out,
        "is_main": dist.is_main,
        "epochs": max(start_epoch, t.epochs),
        "best_epoch": best_epoch,
        "best_val_loss": best_val,
        "last": last_path,
        "best": best_path,
        "history": history,
    }


def _checkpoint_state(
    cfg: Config,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    info: Mapping[str, Any],
    *,
    epoch: int,
    best_val: float,
    best_epoch: int,
    rngs: list[dict[str, Any]],
    metrics: Mapping[str, Any],
) -> dict[str, Any]:
    """Everything needed to continue the run or to explain with it (:data:`CHECKPOINT_KEYS` and more)."""
    init_kwargs = dict(getattr(model, "init_kwargs", None) or _model_overrides(cfg))
    init_kwargs.pop("name", None)
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "version": __version__,
        "config": cfg.to_dict(),
        "variant": cfg.model.name,
        "model_kwargs": _plain(init_kwargs),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "epoch": epoch,
        "best_val_loss": _finite_or_none(best_val),
        "best_epoch": best_epoch,
        "metrics": _plain(dict(metrics)),
        "mean": [float(x) for x in info["mean"]],
        "std": [float(x) for x in info["std"]],
        "structures": list(info.get("structures") or STRUCTURES),
        "image_size": cfg.model.image_size,
        "cache_size": int(info["size"]),
        "rng": rngs,
        "sampler": {"kind": "DistributedSampler", "seed": cfg.train.seed, "epoch": epoch},
    }


# --------------------------------------------------------------------------------------------
# Evaluation of a checkpoint (SPEC §6)
# --------------------------------------------------------------------------------------------
def check_checkpoint_data(ckpt: Mapping[str, Any], info: Mapping[str, Any], cache: str | Path, source: str) -> None:
    """Refuse (one clear line) a cache the checkpoint's model cannot run on; warn on softer mismatches.

    Args:
        ckpt: from :func:`load_checkpoint`.
        info: the cache's ``info.json``.
        cache: the cache folder (for messages).
        source: the checkpoint path (for messages).

    Raises:
        DataError: the cache's images are smaller than the model's input size.
    """
    size, image_size = int(info["size"]), int(ckpt["image_size"])
    if size < image_size:
        raise DataError(
            f"cache {cache} holds {size} px images but the model of {source} takes {image_size} px crops; "
            f"prepare the data with --size {int(ckpt.get('cache_size') or image_size)}"
        )
    trained_on = ckpt.get("cache_size")
    if trained_on and int(trained_on) != size:
        logger.warning(
            "cache %s was prepared at %d px but the model was trained on a %d px cache: the %d px center crop "
            "then covers a different part of the image",
            cache, size, trained_on, image_size,
        )  # fmt: skip
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
    """Every SPEC §6 metric of a checkpoint on a prepared split, written to ``out_dir``.

    Outputs in ``out_dir`` (default ``<checkpoint folder>/eval_<split>``):

    - ``metrics.json``: :meth:`~dermogaze.metrics.EvaluationAccumulator.compute` plus an ``info``
      block (checkpoint, epoch, variant, cache, split);
    - ``predictions.csv``: ``image_id,melanoma[,label]`` (ISIC 2017 Part 3 submission shape);
    - ``confusion_matrix.png`` (Fig. 6, decoder variants) and ``roc.png``.

    The images are normalised with the checkpoint's training mean/std (stored in it), so a cache
    prepared separately (e.g. only the test split) gives the same inputs as during training.
    Superpixel maps, when the cache has them, are center-cropped like the masks and feed the
    ISIC 2017 Task 2 AUC.

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
    from .data.cache import load_info, load_split
    from .data.dataset import DermoscopyDataset
    from .metrics import EvaluationAccumulator, save_metrics, write_predictions_csv

    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    cfg = Config.from_dict(ckpt["config"], source=f"{checkpoint} config")
    if cache is None:
        if not cfg.data.cache:
            raise DermogazeError(f"{checkpoint} names no data cache: pass --data CACHE")
        cache = cfg.data.cache
    cache = Path(cache)
    info = load_info(cache)
    if split not in info.get("splits", []):
        raise DataError(f"cache {cache} has no split {split!r} (it holds {', '.join(info.get('splits', []))})")
    check_checkpoint_data(ckpt, info, cache, str(checkpoint))
    model = model_from_checkpoint(ckpt)
    dev = resolve_device(device)
    model.to(dev)

    has_sp = bool(info.get("has_superpixels", False)) and bool(getattr(model, "needs_masks", False))
    dataset = DermoscopyDataset(
        cache, split, train=False, image_size=int(ckpt["image_size"]), return_superpixels=has_sp
    )
    _use_normalisation(dataset, ckpt["mean"], ckpt["std"])
    sp_features = load_split(cache, split).sp_features if has_sp else None
    loader = DataLoader(
        dataset,
        batch_size=batch_size or cfg.train.batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
    )
    acc = EvaluationAccumulator(structures=ckpt["structures"])
    with_masks = bool(dataset.has_masks)

    def feed(out: GazeOutput, batch: Mapping[str, Any]) -> None:
        b = batch if with_masks else {k: v for k, v in batch.items() if k not in ("masks", "present")}
        feats = [sp_features[int(i)] for i in batch["index"]] if sp_features is not None else None
        acc.update(out, b, sp_features=feats)

    run_inference(
        model, loader, device=dev, autocast=autocast_factory(dev, amp), on_batch=feed, progress=progress,
        desc=f"evaluate {split}",
    )  # fmt: skip
    metrics = acc.compute()
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
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "metrics": save_metrics(metrics, out / "metrics.json"),
        "predictions": write_predictions_csv(acc.predictions, out / "predictions.csv"),
    }
    if figures:
        files.update(_evaluation_figures(metrics, acc.predictions, out, acc.structures))
    logger.info("evaluation of %s on %s/%s written to %s", checkpoint, cache, split, out)
    return {"metrics": metrics, "out_dir": out, "files": files}


def _use_normalisation(dataset: Any, mean: Sequence[float], std: Sequence[float]) -> None:
    """Make an evaluation dataset normalise with the checkpoint's training statistics."""
    from .data.transforms import eval_transform

    if tuple(dataset.mean) == tuple(mean) and tuple(dataset.std) == tuple(std):
        return
    dataset.mean, dataset.std = tuple(mean), tuple(std)
    dataset.transform = eval_transform(dataset.image_size, dataset.mean, dataset.std)


def _evaluation_figures(
    metrics: Mapping[str, Any], predictions: Mapping[str, Sequence], out: Path, structures: Sequence[str]
) -> dict[str, Path]:
    """``roc.png`` (labelled images only) and, for decoder variants, ``confusion_matrix.png`` (Fig. 6)."""
    from .plots import plot_confusion_matrix, plot_roc

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
    if s and s.get("n_images", 0) > 0:
        files["confusion_matrix"] = plot_confusion_matrix(
            s["confusion_matrix"],
            out / "confusion_matrix.png",
            counts=s["confusion_counts"],
            structures=structures,
            accuracy=s.get("accuracy"),
        )
    return files
