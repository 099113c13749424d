"""One config source: YAML preset → dataclass defaults → command-line overrides.

A run's configuration is a :class:`Config` with four sections (``data``, ``model``, ``loss``,
``train``). Presets are the package data ``dermogaze/configs/NAME.yaml`` (read through
``importlib.resources``, so they are found in any install: a checkout, an editable install, a
wheel); a preset only lists what differs from the defaults below, which are the paper's recipe
(SPEC §5). Overrides are ``section.key=value`` strings whose value is
parsed as YAML (``train.epochs=3``, ``model.skip=false``, ``train.betas=[0.9,0.99]``).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .errors import DermogazeError
from .io import write_text

if TYPE_CHECKING:
    from importlib.abc import Traversable


@dataclass
class DataConfig:
    """Where the prepared cache is and how batches are loaded."""

    cache: str | None = None  # folder written by ``dermogaze data prepare``
    train_split: str = "train"
    val_split: str = "val"
    workers: int = 0  # DataLoader worker processes
    pin_memory: bool = True  # only used on CUDA


@dataclass
class ModelConfig:
    """Arguments of :func:`dermogaze.models.build_model` (SPEC §4)."""

    name: str = "deco_gap_3"  # a registered variant (Table 3)
    steps: int = 5  # T, number of gazes
    image_size: int = 224  # network input (center crop of the cached images), multiple of 32
    width: float = 1.0  # multiplier on every channel count
    skip: bool | None = None  # decoder skip averaging; None = the variant's own choice
    batch_norm: str | None = None  # "on" | "off" | "frozen"; None = the variant's own choice
    weights: str | None = None  # None, "imagenet" or a path to a vgg16_bn state dict


@dataclass
class LossConfig:
    """Multi-task loss of Eq. 14 and the structure balancing of §3.2 (SPEC §5)."""

    alpha: float = 0.25
    beta: float = 0.75
    gamma: float = 0.75
    mu: float = 0.25
    focal_theta: float = 2.0
    balancing: str = "batch"  # "w" | "w'" | "batch" | "none"
    eps: float = 1e-6


@dataclass
class TrainConfig:
    """Optimisation recipe (paper §4.1, SPEC §5)."""

    epochs: int = 20
    batch_size: int = 8
    lr_encoder: float = 0.0  # paper: 0 (ImageNet transfer); must be > 0 without pretrained weights
    lr_attention: float = 1e-2  # attentive ConvLSTM
    lr_branches: float = 1e-4  # structure decoder/classifier and diagnosis branch
    betas: tuple[float, float] = (0.92, 0.96)
    weight_decay: float = 1e-6
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    amp: str = "off"  # "off" | "bf16" | "fp16" (GPU only)
    channels_last: bool = False
    compile: bool = False
    grad_clip: float | None = None
    max_train_batches: int | None = None  # cut epochs short (tests, smoke runs)
    sync_bn: bool = False  # distributed CUDA runs: SyncBatchNorm instead of per-process statistics
    lr_schedule: str = "constant"  # "constant" (paper) | "cosine" (per step, from the base rates to 0)
    # decision threshold chosen on the validation split after each epoch: "sensitivity@S", "specificity@S",
    # "youden" or a number (dermogaze.clinical.choose_threshold); stored in the checkpoint
    threshold: str = "sensitivity@0.89"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train"]["betas"] = list(d["train"]["betas"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> Config:
        cfg = cls()
        merge(cfg, d, source=source)
        return cfg


_SECTIONS = ("data", "model", "loss", "train")


def _presets() -> Traversable:
    """The package's ``configs`` folder (the shipped presets)."""
    return resources.files("dermogaze") / "configs"


def available_presets() -> list[str]:
    """Names of the shipped presets (``dermogaze train --preset NAME``)."""
    return sorted(p.name.removesuffix(".yaml") for p in _presets().iterdir() if p.name.endswith(".yaml"))


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check ``value`` against the field's type hint; ints become floats where floats are expected."""
    allowed = set(typing.get_args(hint)) or {hint}
    if value is None:
        if type(None) not in allowed:
            raise DermogazeError(f"{source}: {key} cannot be empty")
        return None
    if typing.get_origin(hint) is tuple or tuple in allowed:
        if not isinstance(value, (list, tuple)):
            raise DermogazeError(f"{source}: {key} must be a list, got {value!r}")
        return tuple(value)
    if bool in allowed and not isinstance(value, bool):
        raise DermogazeError(f"{source}: {key} must be true or false, got {value!r}")
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if float in allowed and str not in allowed and isinstance(value, str):
        # YAML 1.1 reads ``1e-4`` (no dot) as a string: ``-o train.lr_encoder=1e-4`` must still work.
        try:
            return float(value)
        except ValueError:
            raise DermogazeError(f"{source}: {key} must be a number, got {value!r}") from None
    if int in allowed and float not in allowed and not isinstance(value, int):
        raise DermogazeError(f"{source}: {key} must be an integer, got {value!r}")
    if str in allowed and isinstance(value, bool):
        # YAML 1.1 reads a bare on/off/yes/no as a boolean: ``model.batch_norm=off``, ``train.amp=off``.
        return "on" if value else "off"
    if str in allowed and not isinstance(value, str):
        return str(value)
    return value


def merge(cfg: Config, updates: dict[str, Any], *, source: str) -> Config:
    """Apply nested ``{section: {key: value}}`` updates in place; unknown keys are errors."""
    if not isinstance(updates, dict):
        raise DermogazeError(f"{source}: expected a mapping of sections {_SECTIONS}, got {type(updates).__name__}")
    for section, values in updates.items():
        if section not in _SECTIONS:
            raise DermogazeError(f"{source}: unknown section {section!r} (expected one of {', '.join(_SECTIONS)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise DermogazeError(f"{source}: section {section!r} must be a mapping")
        sub = getattr(cfg, section)
        hints = typing.get_type_hints(type(sub))
        for key, value in values.items():
            if key not in hints:
                raise DermogazeError(
                    f"{source}: unknown key {section}.{key} (known: {', '.join(sorted(hints))})"
                )
            setattr(sub, key, _coerce(value, hints[key], f"{section}.{key}", source))
    return cfg


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``["train.epochs=3", "model.skip=false"]`` → ``{"train": {"epochs": 3}, "model": {"skip": False}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise DermogazeError(f"override {item!r} must look like section.key=value (e.g. train.epochs=3)")
        out.setdefault(section, {})[name] = yaml.safe_load(raw) if raw.strip() else None
    return out


def load_config(preset: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build a config from a preset name or YAML path, then apply ``section.key=value`` overrides.

    Raises:
        DermogazeError: unknown preset, unreadable YAML, unknown key.
    """
    cfg = Config()
    if preset is not None:
        path: Path | Traversable = Path(preset)
        if path.suffix not in (".yaml", ".yml"):
            path = _presets() / f"{preset}.yaml"
            if not path.is_file():
                raise DermogazeError(
                    f"unknown preset {preset!r}: available presets are {', '.join(available_presets())}"
                )
        elif not path.is_file():
            raise DermogazeError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise DermogazeError(f"{path}: not valid YAML ({exc})") from None
        merge(cfg, data, source=str(path))
    merge(cfg, parse_overrides(overrides), source="command line")
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), path)
