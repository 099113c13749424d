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

A checkpoint whose weights hold a NaN or an infinity is refused when it is loaded.

The run folder (:class:`RunWriter`; only rank 0 writes, holding the folder's lock)::

    RUN/config.yaml      the resolved configuration
    RUN/metrics.jsonl    one JSON line per epoch
    RUN/last.pt          the checkpoint after the latest epoch (``--resume RUN`` continues from it)
    RUN/best.pt          the checkpoint of the epoch with the lowest validation loss
    RUN/.lock            exists while a run writes here: an exclusive ``flock`` and the writer's pid

Every file is replaced atomically (:func:`~dermogaze.io.atomic_write`). After an epoch ``e`` the
writes come in this order::

    1. metrics.jsonl     rows 1..e
    2. last.pt           epoch e
    3. best.pt           a copy of last.pt, only when epoch e improved the validation loss

so that, whenever the writing process is killed, the folder satisfies the invariant

- ``metrics.jsonl`` holds rows ``1..last.epoch`` and perhaps the row of the epoch after it;
- ``best.pt`` is the checkpoint of ``last.best_epoch``, except after a kill between writes 2 and 3:
  then ``last.best_epoch == last.epoch`` and ``best.pt`` is an older best or absent, never newer;
- temporary files ``.<name>.<random>.tmp`` of the write that was cut short may remain.

Resuming repairs all three (:meth:`RunWriter.start`): rows after ``last.epoch`` are dropped,
``best.pt`` is made a copy of ``last.pt`` when ``last.pt`` is its own best epoch, and the temporary
files are removed. A kill at any instant of an epoch's end therefore resumes into the same
``last.pt``, ``best.pt`` and ``metrics.jsonl`` as the uninterrupted run. A fresh start (in a folder
without any of the four files, or with ``overwrite``) removes ``last.pt`` first, so that no old
``last.pt`` ever sits beside a new ``config.yaml``.
"""

from __future__ import annotations

import filecmp
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import Config, save_config
from ..errors import DermogazeError
from ..io import atomic_write, copy_file, read_jsonl, remove_temporaries, to_jsonable, write_jsonl
from ..models import GazeNet, build_model

try:
    import fcntl
except ImportError:  # Windows: no flock, the run folder is not locked
    fcntl = None

logger = logging.getLogger(__name__)

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


class RunWriter:
    """The files of a run folder and their write order (see the module docstring).

    Only rank 0 locks the folder and writes; every rank may read (:meth:`resume_checkpoint`).

    Args:
        run: the run folder.
    """

    def __init__(self, run: str | Path) -> None:
        self.run = Path(run)
        self.config = self.run / "config.yaml"
        self.metrics = self.run / "metrics.jsonl"
        self.last = self.run / "last.pt"
        self.best = self.run / "best.pt"
        self.lock_file = self.run / ".lock"
        self._lock_fd: int | None = None
        self._created = False

    @property
    def files(self) -> tuple[Path, ...]:
        """The run's files, ``last.pt`` first (the order in which a fresh start removes them)."""
        return (self.last, self.best, self.metrics, self.config)

    def existing(self) -> list[Path]:
        """The run's files present in the folder."""
        return [p for p in self.files if p.exists()]

    def lock(self) -> None:
        """Hold the folder for this process until :meth:`unlock` or its death (``RUN/.lock``, ``flock``).

        Raises:
            DermogazeError: the folder is a file, or another process holds it (the message gives its pid).
        """
        if self.run.exists() and not self.run.is_dir():
            raise DermogazeError(f"{self.run} is a file, not a run folder; choose another --out")
        if fcntl is None:
            return
        self._created = not self.run.exists()
        self.run.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise DermogazeError(
                    f"{self.run} is in use by another dermogaze train (pid {holder}); wait for it to end, "
                    "or choose another --out"
                ) from None
            try:
                same = os.stat(self.lock_file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed the file between our open and our lock: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release :meth:`lock` (no-op if not held); a folder the lock created and nothing filled is removed."""
        if self._lock_fd is None:
            return
        self.lock_file.unlink(missing_ok=True)  # while still locked: a process waiting on this file retries
        os.close(self._lock_fd)
        self._lock_fd = None
        if self._created and self.run.is_dir() and not any(self.run.iterdir()):
            self.run.rmdir()

    def check_fresh(self, *, overwrite: bool) -> None:
        """Refuse to start afresh over a run's files unless ``overwrite``.

        Raises:
            DermogazeError: the folder holds ``config.yaml``, ``metrics.jsonl``, ``last.pt`` or ``best.pt``.
        """
        found = self.existing()
        if not found or overwrite:
            return
        how = f"continue it with --resume {self.run}, " if self.last in found else ""
        raise DermogazeError(
            f"{self.run} already holds a training run ({', '.join(p.name for p in found)}); {how}replace it with "
            "--overwrite, or choose another --out"
        )

    def resume_checkpoint(self, cfg: Config) -> dict[str, Any]:
        """``last.pt``, checked against ``cfg`` and the rest of the folder.

        Raises:
            DermogazeError: no ``last.pt`` (no epoch completed), a checkpoint of another model
                configuration, or a missing ``best.pt`` that ``last.pt`` cannot restore.
        """
        if not self.last.exists() and self.existing():
            raise DermogazeError(
                f"{self.run} holds no completed epoch (no {self.last.name}): nothing to resume; start it again "
                "with --overwrite"
            )
        ckpt = load_checkpoint(self.last)
        if ckpt["config"]["model"] != cfg.to_dict()["model"]:
            raise DermogazeError(
                f"cannot resume {self.last}: its model configuration {ckpt['config']['model']} differs from the "
                f"requested {cfg.to_dict()['model']}"
            )
        epoch, best_epoch = int(ckpt["epoch"]), int(ckpt["best_epoch"])
        if 0 < best_epoch < epoch and not self.best.is_file():
            raise DermogazeError(
                f"{self.best} (the weights of epoch {best_epoch}, the best so far) is missing; restore it before "
                f"resuming {self.run}"
            )
        return ckpt

    def start(
        self, cfg: Config, history: Sequence[Mapping[str, Any]], *, resume_from: Mapping[str, Any] | None
    ) -> None:
        """Make the folder consistent before the first epoch, then write ``config.yaml`` and the history so far.

        Removes the temporary files of interrupted writes. A fresh start (``resume_from`` None)
        removes ``last.pt`` and ``best.pt``; a resumed one restores ``best.pt`` from ``last.pt`` when
        ``last.pt`` is its own best epoch (a kill between the two writes of an improving epoch).
        """
        self.run.mkdir(parents=True, exist_ok=True)
        for path in self.files:
            for tmp in remove_temporaries(path):
                logger.info("removed %s (left by an interrupted write)", tmp)
        if resume_from is None:
            self.last.unlink(missing_ok=True)
            self.best.unlink(missing_ok=True)
        elif int(resume_from["best_epoch"]) == int(resume_from["epoch"]) and not (
            self.best.is_file() and filecmp.cmp(self.last, self.best, shallow=False)
        ):
            copy_file(self.last, self.best)
            logger.info("restored %s from %s (epoch %d, the best)", self.best, self.last, resume_from["epoch"])
        save_config(cfg, self.config)
        write_jsonl(history, self.metrics)

    def read_history(self, until_epoch: int) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl`` up to ``until_epoch`` (later rows belong to an interrupted epoch)."""
        return [r for r in read_jsonl(self.metrics) if r["epoch"] <= until_epoch]

    def save_epoch(self, state: Mapping[str, Any], history: Sequence[Mapping[str, Any]], *, best: bool) -> None:
        """After an epoch: ``metrics.jsonl``, then ``last.pt``, then ``best.pt`` when it improved (in this order)."""
        write_jsonl(history, self.metrics)
        save_checkpoint(self.last, state)
        if best:
            copy_file(self.last, self.best)
