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
    training_data                        what the model was trained on: the cache's name, kind (synthetic or
                                         real), structure set, images per split and fingerprint
                                         (:mod:`dermogaze.data.provenance`)
    ood                                  the training split's feature distribution and the validation threshold
                                         of the out-of-distribution score (:mod:`dermogaze.metrics.ood`), fitted
                                         when training ends (:mod:`dermogaze.training.ood`); None before

Format 2 added ``calibration``; a format-1 checkpoint loads with the network's own probabilities
(temperature 1) and the threshold 0.5, which is what it was used with. ``training_data`` and ``ood``
are optional (:data:`OPTIONAL_KEYS`): a checkpoint written before them loads with the training data
``"unknown"`` (:func:`~dermogaze.data.provenance.unknown_training_data`) and no out-of-distribution
score (:func:`dermogaze.training.ood.fit_checkpoint_ood` fits one).

Every field is checked when the file is loaded (:func:`validate_checkpoint`, called by
:func:`load_checkpoint`, which every reader goes through: evaluate, explain, predict, export, serve,
compare, table3 and ``train --resume``), as the configuration is; a damaged or edited file is refused in
one message naming the file and the field, before any of it is used:

========================  =====================================================================================
field                     accepted
========================  =====================================================================================
format, format_version    ``"dermogaze-checkpoint"``; an integer from 1 to :data:`CHECKPOINT_FORMAT_VERSION`
version                   a string (the release that wrote it)
config                    a mapping that :meth:`~dermogaze.config.Config.from_dict` accepts (every range checked)
variant, model_kwargs     a registered variant and the build arguments it accepts
model                     tensors with exactly the names, shapes and kinds (floating or integer) of the network
                          that ``variant`` and ``model_kwargs`` build, every floating one finite
structures                distinct non-empty names, as many as the structure classifier's classes (any number
                          for a variant without one)
image_size                the input size the network was built for; ``cache_size`` an integer at least as large
mean, std                 three finite numbers each: means in [0, 1], deviations in (0, 1]
calibration               ``temperature`` finite and > 0, ``threshold`` in [0, 1], ``threshold_rule`` a rule of
                          ``train.threshold`` (:func:`~dermogaze.config.parse_threshold_rule`)
epoch, best_epoch         integers, 0 <= best_epoch <= epoch; ``best_val_loss`` finite or None
metrics                   a mapping (the epoch's row)
training_data             the fields of :mod:`dermogaze.data.provenance` with their types, a known ``kind``, and
                          ``structures`` (when known) those of the field ``structures``
ood                       None, or ``mean`` and ``covariance`` finite float tensors of the encoder's ``C`` and
                          ``(C, C)``, the covariance symmetric positive definite; ``threshold`` >= 0; ``quantile``
                          in (0, 1); ``n_train`` >= 2, ``n_val`` >= 1 (:func:`dermogaze.metrics.ood.check_state`)
optimizer, scaler, rng    mappings and a list; with ``resume``, also what resuming restores from them: Adam's
                          groups and moments against the network's parameters, the gradient scaler's state, and
                          random-generator states that restore; and a ``config.model`` that builds this network
========================  =====================================================================================

The network is built on the ``meta`` device for the check (shapes only, no memory, no download). The
run folder that holds ``last.pt`` and ``best.pt`` is :mod:`dermogaze.training.run_folder`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import torch

from ..config import Config, parse_threshold_rule
from ..data.provenance import check_training_data, unknown_training_data
from ..errors import DermogazeError
from ..files import atomic_write, check_file_kind, to_jsonable
from ..metrics.ood import check_state as check_ood_state
from ..models import GazeNet, build_model, list_models
from ..version import __version__
from .seeding import get_rng_state, set_rng_state

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
#: Keys a checkpoint may lack (written before they existed): what it loads with is in the module docstring.
OPTIONAL_KEYS = ("training_data", "ood")
#: What to do about a checkpoint refused for a bad field.
_FIX = "the file is damaged or was edited; use another checkpoint (RUN/best.pt, RUN/last.pt or an earlier run)"
#: The moments Adam keeps per parameter, each of the parameter's shape.
_ADAM_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write a checkpoint atomically (:func:`dermogaze.files.atomic_write`): never a truncated ``path``.

    Args:
        path: destination (``last.pt`` / ``best.pt``).
        state: the checkpoint dict (see :data:`CHECKPOINT_KEYS`).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: the write failed (a full disk), naming ``path``; the previous file is left as it was.
    """
    try:
        with atomic_write(path, "wb") as fh:
            torch.save(dict(state), fh)
    except RuntimeError as exc:  # torch's zip writer reports a failed write of its file as a RuntimeError
        cause = exc.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is None or cause.errno is None:
            raise
        raise OSError(cause.errno, cause.strerror, str(path)) from None
    return Path(path)


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, resume: bool = False
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``torch.load(weights_only=True)``) and check every
    field (:func:`validate_checkpoint`).

    Args:
        path: the ``.pt`` file.
        map_location: where to put its tensors.
        resume: also check what resuming the run restores (optimizer, scaler, random generators).

    Returns:
        The checkpoint dict, plus ``path`` (the file it was read from).

    Raises:
        DermogazeError: the file is missing, not a regular file (a folder, a FIFO, a device),
            truncated/corrupt, holds objects a weights-only load refuses, is not a dermogaze checkpoint,
            comes from a newer dermogaze, or has a field that :func:`validate_checkpoint` refuses — the
            message names the file.
    """
    path = Path(path)
    check_file_kind(path, "checkpoint", "give the .pt file written by 'dermogaze train' (RUN/best.pt)")
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
    ckpt = validate_checkpoint(ckpt, path, resume=resume)
    ckpt["path"] = str(path)  # where it was read from (for messages; not part of the saved file)
    return ckpt


def validate_checkpoint(ckpt: Any, path: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Check every field of a loaded checkpoint (the table of the module docstring).

    Args:
        ckpt: what ``torch.load`` returned.
        path: the file it came from, for the messages.
        resume: also check the optimizer, scaler and random-generator states and that ``config.model``
            builds the stored network (what ``train --resume`` restores).

    Returns:
        ``ckpt``; a format-1 checkpoint gets the calibration it was used with (:data:`UNCALIBRATED`), one without
        :data:`OPTIONAL_KEYS` the training data ``"unknown"`` and ``ood`` None.

    Raises:
        DermogazeError: naming ``path``, the field and what it should be.
    """
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise DermogazeError(
            f"{path} is not a dermogaze checkpoint (expected a file written by 'dermogaze train', such as RUN/best.pt)"
        )

    def bad(field: str, problem: str) -> NoReturn:
        raise DermogazeError(f"checkpoint {path}: {field} {problem}; {_FIX}")

    version = ckpt.get("format_version")
    if not _is_int(version) or version < 1:
        bad("format_version", f"must be an integer from 1 to {CHECKPOINT_FORMAT_VERSION}, got {version!r}")
    if version > CHECKPOINT_FORMAT_VERSION:
        raise DermogazeError(
            f"{path} was written by a newer dermogaze (checkpoint format {version}, this is {__version__} reading "
            f"format {CHECKPOINT_FORMAT_VERSION}); upgrade dermogaze"
        )
    if version == 1:
        ckpt["calibration"] = dict(UNCALIBRATED)
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise DermogazeError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    if not isinstance(ckpt["version"], str):
        bad("version", f"must be the text of a dermogaze release, got {ckpt['version']!r}")
    for field in ("config", "model_kwargs", "model", "metrics", "calibration", "optimizer", "scaler"):
        if not isinstance(ckpt[field], dict) or not all(isinstance(k, (str, int)) for k in ckpt[field]):
            bad(field, f"must be a mapping, got {type(ckpt[field]).__name__}")
    if not isinstance(ckpt["rng"], list):
        bad("rng", f"must be a list of random-generator states, got {type(ckpt['rng']).__name__}")
    try:
        cfg = Config.from_dict(ckpt["config"], source=f"checkpoint {path}: config")
    except DermogazeError as exc:
        raise DermogazeError(f"{exc}; {_FIX}") from None
    model = _check_model(ckpt, path, bad)
    _check_fields(ckpt, path, model, bad)
    if resume:
        _check_resume_state(ckpt, cfg, model, bad)
    return ckpt


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_model(ckpt: dict[str, Any], path: str | Path, bad: Callable[[str, str], NoReturn]) -> GazeNet:
    """``variant``, ``model_kwargs`` and ``model`` against the network they build (on the meta device)."""
    name = ckpt["variant"]
    if not isinstance(name, str) or name not in list_models():
        bad("variant", f"must be one of {', '.join(list_models())}, got {name!r}")
    try:
        with torch.device("meta"):
            model = build_model(name, **dict(ckpt["model_kwargs"], weights=None))
    except (DermogazeError, KeyError, TypeError, ValueError) as exc:
        bad("model_kwargs", f"{ckpt['model_kwargs']!r} do not build a {name!r} network ({exc})")
    state, expected = ckpt["model"], model.state_dict()
    problems = [f"missing {', '.join(sorted(set(expected) - set(state)))}"] if set(expected) - set(state) else []
    if set(state) - set(expected):
        problems.append(f"unexpected {', '.join(sorted(map(str, set(state) - set(expected))))}")
    for key in expected.keys() & state.keys():
        want, got = expected[key], state[key]
        if not isinstance(got, torch.Tensor):
            problems.append(f"{key} is a {type(got).__name__}, not a tensor")
        elif tuple(got.shape) != tuple(want.shape) or got.is_floating_point() != want.is_floating_point():
            kind = "a floating" if got.is_floating_point() else "an integer"
            problems.append(f"{key} is {kind} tensor of shape {tuple(got.shape)} where the network has "
                            f"{'floating' if want.is_floating_point() else 'integer'} {tuple(want.shape)}")
    if problems:
        detail = "; ".join(problems)
        raise DermogazeError(
            f"the weights in {path} do not fit its {name!r} model (a checkpoint of another variant or width, or an "
            f"edited file?): {detail[:300]}; {_FIX}"
        )
    nonfinite = first_nonfinite(state)
    if nonfinite is not None:
        raise DermogazeError(
            f"checkpoint {path} holds non-finite weights (NaN or inf, first in {nonfinite!r}): a corrupt file or a "
            "diverged run; use another checkpoint (RUN/best.pt, or an earlier run)"
        )
    return model


def _check_fields(
    ckpt: dict[str, Any], path: str | Path, model: GazeNet, bad: Callable[[str, str], NoReturn]
) -> None:
    """The fields the readers use besides the network: structures, sizes, normalisation, calibration, progress."""
    structures = ckpt["structures"]
    if (not isinstance(structures, list) or len(set(map(str, structures))) != len(structures)
            or not all(isinstance(s, str) and s for s in structures)):
        bad("structures", f"must be a list of distinct names, got {structures!r}")
    classes = model.init_kwargs["num_structures"]
    if model.decoder is not None and len(structures) != classes:
        raise DermogazeError(
            f"checkpoint {path} names {len(structures)} structures but its model predicts {classes} (field "
            f"structures: {', '.join(structures)}); {_FIX}"
        )
    size = ckpt["image_size"]
    if not _is_int(size) or size != model.image_size:
        bad("image_size", f"must be the input size the network was built for ({model.image_size}, a multiple of 32), "
                          f"got {size!r}")
    if not _is_int(ckpt["cache_size"]) or ckpt["cache_size"] < size:
        bad("cache_size", f"must be an integer of at least image_size {size}, got {ckpt['cache_size']!r}")
    for field, low, high, allowed in (("mean", 0.0, 1.0, "in [0, 1]"), ("std", 0.0, 1.0, "in (0, 1]")):
        values = ckpt[field]
        if (not isinstance(values, (list, tuple)) or len(values) != 3
                or not all(_is_finite_number(v) and low <= v <= high for v in values)
                or (field == "std" and not all(v > 0 for v in values))):
            bad(field, f"must be three finite numbers {allowed} (one per colour channel), got {values!r}")
    cal = ckpt["calibration"]
    temperature, threshold = cal.get("temperature"), cal.get("threshold")
    if not _is_finite_number(temperature) or temperature <= 0:
        bad("calibration.temperature", f"must be a finite number > 0, got {temperature!r}")
    if not _is_finite_number(threshold) or not 0.0 <= threshold <= 1.0:
        bad("calibration.threshold", f"must be a number in [0, 1], got {threshold!r}")
    rule = cal.get("threshold_rule")
    try:
        parse_threshold_rule(rule if isinstance(rule, str) else repr(rule))
    except DermogazeError as exc:
        bad("calibration.threshold_rule", f"is not a rule of train.threshold ({exc})")
    epoch, best_epoch, best_val = ckpt["epoch"], ckpt["best_epoch"], ckpt["best_val_loss"]
    if not _is_int(epoch) or epoch < 0:
        bad("epoch", f"must be the number of epochs completed, got {epoch!r}")
    if not _is_int(best_epoch) or not 0 <= best_epoch <= epoch:
        bad("best_epoch", f"must be an integer from 0 to epoch {epoch}, got {best_epoch!r}")
    if best_val is not None and not _is_finite_number(best_val):
        bad("best_val_loss", f"must be a finite number (or empty), got {best_val!r}")
    if ckpt.get("training_data") is None:
        ckpt["training_data"] = unknown_training_data(structures)
    problem = check_training_data(ckpt["training_data"])
    known = ckpt["training_data"]["structures"] if problem is None else None
    if problem is None and known is not None and known != structures:
        problem = f"names the structures {', '.join(known)}, the checkpoint {', '.join(structures)}"
    if problem is not None:
        bad("training_data", problem)
    ood = ckpt.setdefault("ood", None)
    if ood is not None:
        problem = check_ood_state(ood, model.encoder.out_channels)
        if problem is not None:
            bad("ood", problem)


def _check_resume_state(
    ckpt: dict[str, Any], cfg: Config, model: GazeNet, bad: Callable[[str, str], NoReturn]
) -> None:
    """What ``train --resume`` restores: a ``config.model`` that builds the stored network, Adam's state, the
    gradient scaler's, the random generators'."""
    built = model.init_kwargs
    stored = {"name": ckpt["variant"], **{k: built[k] for k in ("steps", "image_size", "width")}}
    for key, value in stored.items():
        if getattr(cfg.model, key) != value:
            bad(f"config.model.{key}", f"is {getattr(cfg.model, key)!r} but the stored network has {value!r}")
    for key in ("skip", "batch_norm"):
        if getattr(cfg.model, key) not in (None, built[key]):
            bad(f"config.model.{key}", f"is {getattr(cfg.model, key)!r} but the stored network has {built[key]!r}")

    optimizer, groups = ckpt["optimizer"], model.parameter_groups()
    saved, state = optimizer.get("param_groups"), optimizer.get("state")
    if not isinstance(saved, list) or not saved or not isinstance(state, dict):
        bad("optimizer", "must hold Adam's 'state' and 'param_groups'")
    shapes: dict[Any, tuple[int, ...]] = {}
    for group in saved:
        name = group.get("name") if isinstance(group, dict) else None
        if name not in groups or not isinstance(group.get("params"), list):
            bad("optimizer.param_groups", f"must name groups of {', '.join(groups)} with their parameters")
        if len(group["params"]) != len(groups[name]):
            bad(f"optimizer group {name!r}", f"holds {len(group['params'])} parameters, the network "
                                              f"{len(groups[name])}")
        shapes.update(zip(group["params"], (tuple(p.shape) for p in groups[name]), strict=True))
    for index, moments in state.items():
        if index not in shapes or not isinstance(moments, dict):
            bad("optimizer.state", f"has an entry {index!r} for no parameter of its groups")
        for key in _ADAM_MOMENTS:
            value = moments.get(key)
            if value is not None and (not isinstance(value, torch.Tensor) or tuple(value.shape) != shapes[index]):
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                bad(f"optimizer.state[{index}].{key}", f"is {got} where its parameter is {shapes[index]}")
        step = moments.get("step")
        if not (_is_finite_number(step) or (isinstance(step, torch.Tensor) and step.numel() == 1)):
            bad(f"optimizer.state[{index}].step", f"must be a number, got {step!r}")

    scaler = ckpt["scaler"]
    if scaler and not (
        _is_finite_number(scaler.get("scale")) and scaler["scale"] > 0
        and _is_finite_number(scaler.get("growth_factor")) and _is_finite_number(scaler.get("backoff_factor"))
        and _is_int(scaler.get("growth_interval")) and _is_int(scaler.get("_growth_tracker"))
    ):
        bad("scaler", f"is not a gradient scaler's state, got {scaler!r}")

    rngs = ckpt["rng"]
    if not rngs or not all(isinstance(r, dict) for r in rngs):
        bad("rng", "must hold every rank's random-generator states")
    current = get_rng_state()
    try:
        for rng in rngs:
            set_rng_state(rng)
    except (AttributeError, IndexError, KeyError, RuntimeError, TypeError, ValueError) as exc:
        bad("rng", f"holds a random-generator state that cannot be restored ({type(exc).__name__}: {exc})")
    finally:
        set_rng_state(current)


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
    training_data: Mapping[str, Any] | None = None,
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
        training_data: :func:`~dermogaze.data.provenance.training_collection` of the training cache (None:
            ``"unknown"``).

    The ``ood`` field is None: :func:`dermogaze.training.ood.fit_run_ood` fills it when training ends.
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
        "training_data": to_jsonable(dict(training_data)) if training_data is not None
        else unknown_training_data(info["structures"]),
        "ood": None,
    }
