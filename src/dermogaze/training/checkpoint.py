"""Checkpoints and the run folder (timm's ``CheckpointSaver``): what a run writes, atomically.

A checkpoint is a dict of tensors and plain Python values (read with
``torch.load(weights_only=True)``)::

    format, format_version, version     "dermogaze-checkpoint", 1, the dermogaze release
    config                               the resolved configuration (Config.to_dict())
    variant, model_kwargs                build_model(variant, **model_kwargs) rebuilds the network
    model                                its state dict
    optimizer, scaler                    Adam's and the fp16 gradient scaler's state ({} when unused)
    epoch, best_val_loss, best_epoch     where the run stands
    metrics                              the epoch's row of metrics.jsonl
    mean, std                            the training split's normalisation (inputs at inference)
    structures, image_size, cache_size   structure names in index order; model input; cache side
    calibration                          {"temperature", "threshold", "threshold_rule"}: fitted on the
                                         validation predictions of the checkpoint's own epoch
    rng                                  every rank's generator states (exact resume)

Format 2 added ``calibration``; a format-1 checkpoint loads with the network's own probabilities
(temperature 1) and the threshold 0.5, which is what it was used with.

The run folder (:class:`RunWriter`; only rank 0 writes)::

    RUN/config.yaml      the resolved configuration
    RUN/metrics.jsonl    one JSON line per epoch
    RUN/last.pt          the checkpoint after the latest epoch (``--resume RUN`` continues from it)
    RUN/best.pt          the checkpoint of the epoch with the lowest validation loss
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import Config, save_config
from ..errors import DermogazeError
from ..io import atomic_write, copy_file, read_jsonl, to_jsonable, write_jsonl
from ..models import GazeNet, build_model

#: Marks a file as a dermogaze checkpoint; ``CHECKPOINT_FORMAT_VERSION`` is bumped when the layout
#: changes incompatibly.
CHECKPOINT_FORMAT = "dermogaze-checkpoint"
CHECKPOINT_FORMAT_VERSION = 2
#: What a format-1 checkpoint (before calibration was stored) was evaluated with.
UNCALIBRATED = {"temperature": 1.0, "threshold": 0.5, "threshold_rule": "0.5"}
#: Keys every checkpoint holds (the module docstring says what each is).
CHECKPOINT_KEYS = (
    "format",
    "format_version",
    "version",
    "config",
    "variant",
    "model_kwargs",
    "model",
    "optimizer",
    "scaler",
    "epoch",
    "best_val_loss",
    "best_epoch",
    "metrics",
    "mean",
    "std",
    "structures",
    "image_size",
    "cache_size",
    "calibration",
    "rng",
)


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write a checkpoint atomically (:func:`dermogaze.io.atomic_write`): never a truncated ``path``.

    Args:
        path: destination (``last.pt`` / ``best.pt``).
        state: the checkpoint dict (see :data:`CHECKPOINT_KEYS`).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    with atomic_write(path, "wb") as fh:
        torch.save(dict(state), fh)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``torch.load(weights_only=True)``).

    Args:
        path: the ``.pt`` file.
        map_location: where to put its tensors.

    Returns:
        The checkpoint dict, plus ``path`` (the file it was read from).

    Raises:
        DermogazeError: the file is missing, truncated/corrupt, holds objects a weights-only load
            refuses, is not a dermogaze checkpoint or comes from a newer dermogaze — the message
            names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DermogazeError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for bad files
        text = str(exc).strip()
        if "weights only" in text.lower() or "weights_only" in text.lower():
            raise DermogazeError(
                f"{path} is not a dermogaze checkpoint (it holds Python objects a safe load refuses)"
            ) from None
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise DermogazeError(f"cannot read checkpoint {path}: truncated or corrupt file ({reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise DermogazeError(
            f"{path} is not a dermogaze checkpoint (expected a file written by 'dermogaze train', such as RUN/best.pt)"
        )
    if ckpt.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
        raise DermogazeError(
            f"{path} was written by a newer dermogaze (checkpoint format {ckpt.get('format_version')}, this is "
            f"{__version__} reading format {CHECKPOINT_FORMAT_VERSION}); upgrade dermogaze"
        )
    if ckpt.get("format_version") == 1:
        ckpt["calibration"] = dict(UNCALIBRATED)
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise DermogazeError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    ckpt["path"] = str(path)  # where it was read from (for messages; not part of the saved file)
    return ckpt


def model_from_checkpoint(ckpt: Mapping[str, Any], *, variant: str | None = None) -> GazeNet:
    """Rebuild the network stored in a checkpoint and load its weights (no pretrained download).

    Args:
        ckpt: a dict from :func:`load_checkpoint`.
        variant: if given, the variant the caller expects; a checkpoint of another variant is an error.

    Returns:
        The model on the CPU, in eval mode.

    Raises:
        DermogazeError: another variant than expected, or weights that do not fit the variant the
            checkpoint names (e.g. a file edited or assembled from two runs).
    """
    name = ckpt["variant"]
    where = ckpt.get("path", "the checkpoint")
    if variant is not None and variant != name:
        raise DermogazeError(f"{where} holds a {name!r} model, not {variant!r}")
    kwargs = dict(ckpt["model_kwargs"], weights=None)  # the checkpoint holds every weight: never fetch ImageNet's
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


def checkpoint_state(
    cfg: Config,
    model: GazeNet,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    info: Mapping[str, Any],
    *,
    epoch: int,
    best_val: float | None,
    best_epoch: int,
    rngs: list[dict[str, Any]],
    metrics: Mapping[str, Any],
    calibration: Mapping[str, Any],
) -> dict[str, Any]:
    """The checkpoint dict of a training run after ``epoch`` (every key of :data:`CHECKPOINT_KEYS`).

    Args:
        cfg: the run's configuration.
        model: the network (not a DDP wrapper).
        optimizer, scaler: their states are saved.
        info: the training cache's ``info.json`` (normalisation, structures, size).
        epoch: epochs completed.
        best_val, best_epoch: lowest validation loss so far (None while undefined) and its epoch.
        rngs: every rank's :func:`~dermogaze.training.seeding.get_rng_state`.
        metrics: the epoch's row of ``metrics.jsonl``.
        calibration: ``temperature``, ``threshold`` and ``threshold_rule`` fitted on this epoch's validation.
    """
    model_kwargs = {k: v for k, v in model.init_kwargs.items() if k != "name"}
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "version": __version__,
        "config": cfg.to_dict(),
        "variant": model.variant,
        "model_kwargs": to_jsonable(model_kwargs),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "epoch": epoch,
        "best_val_loss": best_val,
        "best_epoch": best_epoch,
        "metrics": to_jsonable(dict(metrics)),
        "mean": [float(x) for x in info["mean"]],
        "std": [float(x) for x in info["std"]],
        "structures": list(info["structures"]),
        "image_size": cfg.model.image_size,
        "cache_size": int(info["size"]),
        "calibration": to_jsonable(dict(calibration)),
        "rng": rngs,
    }


class RunWriter:
    """The files of a run folder (see the module docstring); only rank 0 creates one.

    Args:
        run: the run folder.
    """

    def __init__(self, run: str | Path) -> None:
        self.run = Path(run)
        self.config = self.run / "config.yaml"
        self.metrics = self.run / "metrics.jsonl"
        self.last = self.run / "last.pt"
        self.best = self.run / "best.pt"

    def start(self, cfg: Config, history: Sequence[Mapping[str, Any]], *, resume: bool) -> None:
        """Write ``config.yaml`` and the history kept so far; a fresh run drops an old ``best.pt``."""
        self.run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.config)
        if not resume:
            self.best.unlink(missing_ok=True)
        write_jsonl(history, self.metrics)

    def read_history(self, until_epoch: int) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl`` up to ``until_epoch`` (later rows belong to an interrupted epoch)."""
        return [r for r in read_jsonl(self.metrics) if r["epoch"] <= until_epoch]

    def save_epoch(self, state: Mapping[str, Any], history: Sequence[Mapping[str, Any]], *, best: bool) -> None:
        """After an epoch: ``metrics.jsonl``, then ``last.pt``, and ``best.pt`` when it improved."""
        write_jsonl(history, self.metrics)
        save_checkpoint(self.last, state)
        if best:
            copy_file(self.last, self.best)
