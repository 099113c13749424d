"""The checkpoint format (timm's ``CheckpointSaver``): what a checkpoint holds, written atomically, read safely.

A checkpoint is a dict of tensors and plain Python values (read with
``torch.load(weights_only=True)``)::

    format, format_version, version     "dermogaze-checkpoint", 2 (CHECKPOINT_FORMAT_VERSION), the dermogaze release
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

A checkpoint whose weights hold a NaN or an infinity is refused when it is loaded. The run folder
that holds ``last.pt`` and ``best.pt`` is :mod:`dermogaze.training.run_folder`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..errors import DermogazeError
from ..files import atomic_write, to_jsonable
from ..models import GazeNet, build_model
from ..version import __version__

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
    """Write a checkpoint atomically (:func:`dermogaze.files.atomic_write`): never a truncated ``path``.

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
            refuses, is not a dermogaze checkpoint, comes from a newer dermogaze or holds NaN or
            infinite weights — the message names the file.
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
    bad = first_nonfinite(ckpt["model"])
    if bad is not None:
        raise DermogazeError(
            f"checkpoint {path} holds non-finite weights (NaN or inf, first in {bad!r}): a corrupt file or a "
            "diverged run; use another checkpoint (RUN/best.pt, or an earlier run)"
        )
    ckpt["path"] = str(path)  # where it was read from (for messages; not part of the saved file)
    return ckpt


def first_nonfinite(state: Mapping[str, Any]) -> str | None:
    """The name of the first floating-point tensor of a state dict holding a NaN or an infinity (None if none)."""
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def check_structure_set(ckpt: Mapping[str, Any], info: Mapping[str, Any], cache: str | Path) -> None:
    """Refuse a cache whose structure set is not the one the checkpoint's model was trained on.

    The structure classifier has one output per structure of the training data, in its order, so a
    model of the ISIC 2017 set cannot be scored on (or trained on with) an ISIC 2018 cache, and back.

    Raises:
        DermogazeError: the sets differ (the message names both).
    """
    trained, found = list(ckpt["structures"]), list(info["structures"])
    if trained != found:
        raise DermogazeError(
            f"the model of {ckpt.get('path', 'the checkpoint')} was trained on the structures {', '.join(trained)} "
            f"but cache {cache} holds {', '.join(found)}; use a cache of the same structure set (ISIC 2017 or 2018)"
        )


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
