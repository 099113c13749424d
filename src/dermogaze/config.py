"""One config source: YAML preset → dataclass defaults → command-line overrides.

A run's configuration is a :class:`Config` with four sections (``data``, ``model``, ``loss``,
``train``). Presets are the package data ``dermogaze/configs/NAME.yaml`` (read through
``importlib.resources``, so they are found in any install: a checkout, an editable install, a
wheel); a preset only lists what differs from the defaults below, which are the paper's recipe
(docs/design.md §5). Overrides are ``section.key=value`` strings whose value is
parsed as YAML (``train.epochs=3``, ``model.skip=false``, ``train.betas=[0.9,0.99]``).

Every way a config is made ends in one :func:`validate` step (:func:`load_config` for presets and
overrides, :meth:`Config.from_dict` for a checkpoint's stored config, the command line after its
flags). The type of each value is checked while merging (:func:`merge`); its range and choices
once every source is merged (so an override may repair a preset's value). A nonsense value thus
fails in one line naming ``section.key``, the value and what is allowed, before any folder is
created or any work is done. The rules: :data:`RANGES` and the choices of :func:`_choices`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .errors import DermogazeError
from .files import check_file_kind, write_text

if TYPE_CHECKING:
    from importlib.abc import Traversable

# ----------------------------------------------------------------------------------------------
# The vocabularies of the configuration. The modules that implement each choice import its names
# from here (this module imports no other part of the package but errors and files); the tests
# check that each implementation covers its vocabulary.

#: The Table 3 variants (``dermogaze.models.build_model``'s registry).
MODEL_NAMES = ("vgg", "vgg_gap", "vgg_attconvlstm", "vgg_attconvlstm_gap", "deco_gap_3", "deco_gap_5", "deco_gap_17")
#: Batch normalisation of the encoder: trained, absent, or frozen at its (ImageNet) statistics.
BATCH_NORM_MODES = ("on", "off", "frozen")
#: Accepted values of ``loss.balancing`` → canonical name (``dermogaze.losses``, Eqs. 15-16).
BALANCING: dict[str, str] = {"w": "w", "w'": "w'", "w_prime": "w'", "batch": "batch", "none": "none"}
#: Learning-rate schedules (``dermogaze.training.optim.LR_SCHEDULES``).
LR_SCHEDULE_NAMES = ("constant", "cosine")
#: Compute devices (``dermogaze.runtime.resolve_device``); ``cuda:N`` is accepted too.
DEVICES = ("auto", "cpu", "cuda")
#: Mixed-precision modes (``dermogaze.runtime.autocast_factory``).
AMP_MODES = ("off", "bf16", "fp16")
#: Training augmentations (``dermogaze.data.transforms.train_transform``): the 8 symmetries of the square, or those
#: plus a random scale and crop and a colour jitter, for photographs (docs/design.md §3).
AUGMENTATIONS = ("dihedral", "dermoscopy")

# The vocabularies and defaults of the commands: the command line builds its parsers from these names, and the
# modules that implement each one (which import torch, numpy...) import it from here.

#: The presets of Table 3 (``dermogaze table3``, ``dermogaze.experiments.table3``), in the paper's order: each
#: variant's shipped preset (``configs/NAME.yaml``) is named after it.
TABLE3_PRESETS: tuple[str, ...] = MODEL_NAMES
#: Images that get the costly explanation measures (deletion, insertion, stability) unless told otherwise
#: (``dermogaze.evaluation.evaluate``; ``--faithfulness`` of ``evaluate``, ``compare`` and ``table3``).
DEFAULT_FAITHFULNESS = 100
#: Challenge submission formats (``dermogaze.apps.predict``, ``dermogaze predict --format``).
SUBMISSION_FORMATS = ("isic2018-task2", "isic2017-part3")
#: Values of ``prepare(layout=...)`` (``dermogaze.data.prepare``, ``dermogaze data prepare --layout``); a cache's
#: ``info["layout"]`` is one of them other than ``"auto"``.
LAYOUTS = ("auto", "isic2017", "isic2018", "images")
#: Default address of the viewer (``dermogaze.apps.serve``, ``dermogaze serve``): this machine only.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860

_RULE_HELP = "expected 'sensitivity@S' or 'specificity@S' (0 < S <= 1), 'youden', or a number in [0, 1]"


def parse_threshold_rule(rule: str) -> tuple[str, float | None]:
    """Read a decision-threshold rule (``train.threshold``; applied by ``metrics.clinical.choose_threshold``).

    Returns:
        ``("fixed", t)`` for a number ``t`` in [0, 1], ``("sensitivity", S)`` or ``("specificity", S)``
        for ``"sensitivity@S"``/``"specificity@S"`` with 0 < S <= 1, ``("youden", None)``.

    Raises:
        DermogazeError: any other text, naming the rules allowed.
    """
    text = str(rule).strip()
    name, at, value = text.partition("@")
    if not at and name == "youden":
        return "youden", None
    if not at:
        try:
            number = float(text)
        except ValueError:
            raise DermogazeError(f"threshold rule {rule!r}: {_RULE_HELP}") from None
        if not 0.0 <= number <= 1.0:
            raise DermogazeError(f"threshold rule {rule!r}: a fixed threshold must be in [0, 1]")
        return "fixed", number
    try:
        level = float(value)
    except ValueError:
        raise DermogazeError(f"threshold rule {rule!r}: {_RULE_HELP}") from None
    if name not in ("sensitivity", "specificity") or not 0.0 < level <= 1.0:
        raise DermogazeError(f"threshold rule {rule!r}: {_RULE_HELP}")
    return name, level


@dataclass
class DataConfig:
    """Where the prepared cache is and how batches are loaded."""

    cache: str | None = None  # folder written by ``dermogaze data prepare``
    train_split: str = "train"
    val_split: str = "val"
    workers: int = 0  # DataLoader worker processes
    augment: str = "dihedral"  # training augmentation: "dihedral" | "dermoscopy" (scale, crop and colour too)
    pin_memory: bool = True  # only used on CUDA


@dataclass
class ModelConfig:
    """Arguments of :func:`dermogaze.models.build_model` (docs/design.md §4)."""

    name: str = "deco_gap_3"  # a registered variant (Table 3)
    steps: int = 5  # T, number of gazes
    image_size: int = 224  # network input (center crop of the cached images), multiple of 32
    width: float = 1.0  # multiplier on every channel count
    skip: bool | None = None  # decoder skip averaging; None = the variant's own choice
    batch_norm: str | None = None  # "on" | "off" | "frozen"; None = the variant's own choice
    weights: str | None = None  # None, "imagenet" or a path to a vgg16_bn state dict


@dataclass
class LossConfig:
    """Multi-task loss of Eq. 14 and the structure balancing of §3.2 (docs/design.md §5)."""

    alpha: float = 0.25
    beta: float = 0.75
    gamma: float = 0.75
    mu: float = 0.25
    focal_theta: float = 2.0
    balancing: str = "batch"  # "w" | "w'" | "batch" | "none"
    eps: float = 1e-6
    attention: float = 0.0  # λ of the attention supervision (beyond the paper, docs/design.md §6b); 0 = the paper
    attention_warmup: int = 0  # epochs over which the training loss's λ rises linearly from 0 (0 = λ from the start)
    attention_matching: bool = False  # with λ > 0, the Hungarian matching also weighs λ·(1 − Σ A_t·m_s)
    class_matching: bool = False  # the Hungarian matching also weighs βμ·CE(pred_t, s) (DETR's class-aware cost)


@dataclass
class TrainConfig:
    """Optimisation recipe (paper §4.1, docs/design.md §5)."""

    epochs: int = 20
    batch_size: int = 8
    lr_encoder: float = 0.0  # paper: 0 (ImageNet transfer); must be > 0 without pretrained weights
    lr_attention: float = 1e-2  # attentive ConvLSTM
    lr_branches: float = 1e-4  # structure decoder/classifier and diagnosis branch
    betas: tuple[float, float] = (0.92, 0.96)
    weight_decay: float = 1e-6
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    amp: str = "off"  # "off" | "bf16" (CUDA, or a CPU with native bf16) | "fp16" (CUDA); runtime.effective_amp
    channels_last: bool = False
    compile: bool = False
    grad_clip: float | None = None
    max_train_batches: int | None = None  # cut epochs short (tests, smoke runs)
    sync_bn: bool = False  # distributed CUDA runs: SyncBatchNorm instead of per-process statistics
    lr_schedule: str = "constant"  # "constant" (paper) | "cosine" (per step, from the base rates to 0)
    # repeat-factor sampling of images with rare structures (dermogaze.training.sampling): threshold t of
    # r_c = max(1, sqrt(t / f_c)); 0 = off (the paper: every image once per epoch)
    repeat_threshold: float = 0.0
    # decision threshold chosen on the validation split after each epoch: "sensitivity@S", "specificity@S",
    # "youden" or a number (dermogaze.metrics.clinical.choose_threshold); stored in the checkpoint
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
        """The config of a nested dict (a checkpoint's ``config``), merged over the defaults and validated."""
        cfg = cls()
        merge(cfg, d, source=source)
        return validate(cfg, source=source)


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
        return tuple(float(v) if _is_number(v) else v for v in value)
    if bool in allowed and not isinstance(value, bool):
        raise DermogazeError(f"{source}: {key} must be true or false, got {value!r}")
    if isinstance(value, bool) and bool not in allowed and str not in allowed:
        kind = "a number" if float in allowed else "an integer"
        raise DermogazeError(f"{source}: {key} must be {kind}, got {value!r}")
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ----------------------------------------------------------------------------------------------
# Ranges and choices
# ----------------------------------------------------------------------------------------------


# Limits: a value beyond one cannot finish on any machine (or exhausts its memory before any work), so it is
# refused before anything is created, with the reason in the message. The command line bounds its flags of the
# same quantities with the same constants (``dermogaze.cli.common.int_in``).

#: Epochs of a run (``train.epochs``, ``loss.attention_warmup``): 50 times the paper's 20.
MAX_EPOCHS = 1000
#: Images per batch (``train.batch_size``, ``--batch-size``): the activations of 1024 images of 224 px alone
#: take tens of gigabytes; larger batches only fail for memory.
MAX_BATCH_SIZE = 1024
#: Gazes ``T`` (``model.steps``): the paper uses 3 to 17; every gaze is a decoder pass.
MAX_STEPS = 64
#: Side of the network's input (``model.image_size``): the paper's is 224; the encoder's activations of one
#: 1024 px image in training already take gigabytes.
MAX_IMAGE_SIZE = 1024
#: Side of a cache's square images (``data prepare --size``): twice :data:`MAX_IMAGE_SIZE` (the network takes
#: crops of the cached images), 4.2 million pixels, a twenty-fourth of the pixel budget of one image file
#: (``dermogaze.data.images.MAX_IMAGE_PIXELS``); each cached image takes 12.6 MB.
MAX_CACHE_SIZE = 2048
#: Channel multiplier (``model.width``): 4 gives 16 times the paper's parameters (~0.5 billion).
MAX_WIDTH = 4.0
#: Data-loading or decoding processes (``data.workers``, ``--workers``): each holds a copy of the loader's state;
#: beyond a machine's cores none is faster, and thousands exhaust any machine's memory.
MAX_WORKERS = 64
#: The largest seed (``train.seed``, every ``--seed``): NumPy's and scikit-learn's seeds are 32-bit.
MAX_SEED = 2**32 - 1
#: The smallest side of a synthetic picture (``dermogaze.data.synth``, ``data synth --width/--height``): the
#: network's smallest input.
SYNTH_MIN_SIDE = 32
#: The largest side of a synthetic picture: the size of a small ISIC image. Rendering costs grow with the
#: pixels: a 2048×2048 picture takes seconds and under a gigabyte, one of 100 000 px a side could not be
#: rendered on any machine.
SYNTH_MAX_SIDE = 2048
#: The most synthetic images of one split (``data synth --train/--val/--test``): five times ISIC 2017's 2000
#: training images (synthetic data exercises the pipeline; a count of millions would render for days), below the
#: million ids of a split's range (``dermogaze.data.synth.write.image_id``).
SYNTH_MAX_COUNT = 10_000


def _range(test: Callable[[Any], bool], allowed: str, *, optional: bool = False) -> tuple:
    return test, allowed + (" (or empty)" if optional else ""), optional


#: ``section.key`` → (test of a present value, the allowed range in words, whether None is allowed).
#: Floats must also be finite.
RANGES: dict[str, tuple[Callable[[Any], bool], str, bool]] = {
    "data.workers": _range(lambda v: 0 <= v <= MAX_WORKERS, f"an integer from 0 to {MAX_WORKERS} (processes)"),
    "model.steps": _range(lambda v: 1 <= v <= MAX_STEPS, f"an integer from 1 to {MAX_STEPS} (gazes)"),
    "model.image_size": _range(
        lambda v: 32 <= v <= MAX_IMAGE_SIZE and v % 32 == 0,
        f"a multiple of 32 from 32 to {MAX_IMAGE_SIZE} (e.g. 224; larger inputs exhaust the memory)",
    ),
    "model.width": _range(lambda v: 0 < v <= MAX_WIDTH, f"a number > 0 and at most {MAX_WIDTH:g}"),
    **{f"loss.{k}": _range(lambda v: v >= 0, "a number >= 0") for k in ("alpha", "beta", "gamma", "mu")},
    "loss.focal_theta": _range(lambda v: v >= 0, "a number >= 0"),
    "loss.attention": _range(lambda v: v >= 0, "a number >= 0"),
    "loss.attention_warmup": _range(lambda v: 0 <= v <= MAX_EPOCHS, f"a whole number of epochs from 0 to {MAX_EPOCHS}"),
    "loss.eps": _range(lambda v: v > 0, "a number > 0"),
    "train.epochs": _range(lambda v: 1 <= v <= MAX_EPOCHS, f"an integer from 1 to {MAX_EPOCHS}"),
    "train.batch_size": _range(lambda v: 1 <= v <= MAX_BATCH_SIZE, f"an integer from 1 to {MAX_BATCH_SIZE}"),
    **{f"train.{k}": _range(lambda v: v >= 0, "a number >= 0") for k in ("lr_encoder", "lr_attention", "lr_branches")},
    "train.betas": _range(
        lambda v: len(v) == 2 and all(_is_number(b) and math.isfinite(b) and 0 <= b < 1 for b in v),
        "two numbers in [0, 1), e.g. [0.92, 0.96]",
    ),
    "train.weight_decay": _range(lambda v: v >= 0, "a number >= 0"),
    "train.seed": _range(lambda v: 0 <= v <= MAX_SEED, f"an integer from 0 to {MAX_SEED}"),
    "train.repeat_threshold": _range(
        lambda v: 0 <= v <= 1, "a fraction of images in [0, 1] (0 = off; above 1 it would repeat every image alike)"
    ),
    "train.grad_clip": _range(lambda v: v > 0, "a number > 0", optional=True),
    "train.max_train_batches": _range(lambda v: v >= 1, "an integer >= 1", optional=True),
}


def _choices() -> dict[str, tuple[str | None, ...]]:
    """``section.key`` → the values allowed."""
    return {
        "model.name": MODEL_NAMES,
        "model.batch_norm": (None, *BATCH_NORM_MODES),
        "loss.balancing": tuple(BALANCING),
        "data.augment": AUGMENTATIONS,
        "train.amp": AMP_MODES,
        "train.lr_schedule": LR_SCHEDULE_NAMES,
    }


def validate(cfg: Config, *, source: str = "config", origins: Mapping[str, str] | None = None) -> Config:
    """Check every value of ``cfg`` against :data:`RANGES` and the allowed choices.

    Args:
        cfg: a merged config.
        source: where the values come from, for the message (a file, ``command line``).
        origins: ``section.key`` → where that key was set, when it differs from ``source``.

    Returns:
        ``cfg``, unchanged.

    Raises:
        DermogazeError: one line listing every bad value: ``section.key``, the value and what is allowed.
    """
    origins = origins or {}
    problems: list[tuple[str, str]] = []  # (key, what is wrong)
    for key, (test, allowed, optional) in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is None and optional:
            continue
        finite = not isinstance(value, float) or math.isfinite(value)
        if value is None or not finite or not test(value):
            problems.append((key, f"must be {allowed}, got {value!r}"))
    for key, allowed in _choices().items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            shown = ", ".join("empty" if a is None else repr(a) for a in allowed)
            problems.append((key, f"must be one of {shown}, got {value!r}"))
    device = cfg.train.device
    if device not in DEVICES and not re.fullmatch(r"cuda:\d+", device):
        problems.append(("train.device", f"must be one of {', '.join(DEVICES)} or cuda:N, got {device!r}"))
    try:
        parse_threshold_rule(cfg.train.threshold)
    except DermogazeError as exc:
        problems.append(("train.threshold", f"is invalid: {exc}"))
    if problems:
        raise DermogazeError("; ".join(f"{origins.get(k, source)}: {k} {why}" for k, why in problems))
    return cfg


# ----------------------------------------------------------------------------------------------
# Merging, overrides, files
# ----------------------------------------------------------------------------------------------


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
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise DermogazeError(
                f"override {item!r}: the value is not valid YAML ({_yaml_problem(exc)}); write lists as "
                "[0.9, 0.99] and quote text holding ':' or '#'"
            ) from None
        out.setdefault(section, {})[name] = value
    return out


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line of a YAML error: what is wrong and where (PyYAML's own message spans several lines)."""
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


def load_config(preset: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build a config from a preset name or YAML path, then apply ``section.key=value`` overrides.

    Raises:
        DermogazeError: unknown preset, unreadable YAML, unknown key, a value out of range
            (:func:`validate`).
    """
    cfg = Config()
    origins: dict[str, str] = {}  # section.key → the file or "command line" that set it
    if preset is not None:
        path: Path | Traversable = Path(preset)
        if path.suffix not in (".yaml", ".yml"):
            path = _presets() / f"{preset}.yaml"
            if not path.is_file():
                raise DermogazeError(
                    f"unknown preset {preset!r}: available presets are {', '.join(available_presets())}"
                )
        elif not check_file_kind(path, "config file", "give a YAML file or a preset name").is_file():
            raise DermogazeError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise DermogazeError(f"{path}: not valid YAML ({_yaml_problem(exc)}); fix the file") from None
        except UnicodeDecodeError:
            raise DermogazeError(f"{path}: not a YAML text file (it is not UTF-8 text)") from None
        merge(cfg, data, source=str(path))
        origins.update(_keys_of(data, str(path)))
    updates = parse_overrides(overrides)
    merge(cfg, updates, source="command line")
    origins.update(_keys_of(updates, "command line"))
    return validate(cfg, source="config", origins=origins)


def _keys_of(updates: Mapping[str, Any], source: str) -> dict[str, str]:
    """``{"section.key": source}`` for every key of merged ``{section: {key: value}}`` updates."""
    return {f"{section}.{key}": source for section, values in updates.items() for key in (values or {})}


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), path)
