"""Search spaces and objectives of a sweep: which ``section.key`` values a trial draws, and what it maximises.

The search space is a YAML mapping ``section.key: {KIND: VALUES}``::

    train.lr_attention: {log: [1.0e-4, 1.0e-2]}     # log-uniform float in [LOW, HIGH]
    loss.attention:     {float: [0.0, 1.0]}         # uniform float
    model.steps:        {int: [2, 5]}               # integer, both ends included
    loss.balancing:     {categorical: [batch, none]}

Every key is checked against the configuration dataclasses before any trial runs
(:func:`load_space`): an unknown key, an empty range, a kind that does not fit the key's type,
or an end value that :func:`dermogaze.config.validate` refuses is one line naming the file.

The objective is ``val_auc`` (default), ``val_ap``, ``val_map`` or a weighted sum such as
``0.7*val_auc+0.3*val_map`` of the per-epoch validation metrics of ``metrics.jsonl``, maximised
(:func:`parse_objective`, :func:`objective_value`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import typing
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ...config import Config, merge, validate
from ...errors import DermogazeError

if TYPE_CHECKING:
    import optuna

#: Metrics of a ``metrics.jsonl`` row an objective may weigh (all: higher is better).
OBJECTIVE_METRICS = ("val_auc", "val_ap", "val_map")
#: Kinds of a search-space entry.
KINDS = ("float", "log", "int", "categorical")


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched ``section.key``: its kind and its range (``(low, high)``) or choices."""

    key: str
    kind: str
    values: tuple[Any, ...]

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value of this key (a retried trial gets its first run's value back)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.values))
        if self.kind == "int":
            return trial.suggest_int(self.key, *self.values)
        return trial.suggest_float(self.key, *self.values, log=self.kind == "log")

    def to_dict(self) -> dict[str, Any]:
        return {self.key: {self.kind: list(self.values)}}


def _sweeps() -> Any:
    """The package's ``configs/sweeps`` folder (the shipped search spaces)."""
    return resources.files("dermogaze") / "configs" / "sweeps"


def available_spaces() -> list[str]:
    """Names of the shipped search spaces (``dermogaze sweep --space NAME``)."""
    return sorted(p.name.removesuffix(".yaml") for p in _sweeps().iterdir() if p.name.endswith(".yaml"))


def _space_file(space: str | Path) -> Any:
    """The file of ``--space``: a path, a shipped space's name, or a path in the package (configs/sweeps/demo.yaml)."""
    path = Path(space)
    if path.is_file():
        return path
    candidates = [_sweeps() / f"{space}.yaml"] if path.suffix not in (".yaml", ".yml") else []
    candidates.append(resources.files("dermogaze").joinpath(*path.parts))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DermogazeError(
        f"search space {space}: no such file nor shipped space (shipped: {', '.join(available_spaces())})"
    )


def load_space(space: str | Path, base: Config) -> list[Param]:
    """Read and check a search-space YAML against ``base`` (the configuration every trial starts from).

    Args:
        space: a YAML file, or the name of a shipped space (``demo``).
        base: the resolved base configuration.

    Returns:
        The searched keys, in file order.

    Raises:
        DermogazeError: one line naming the file and the key: unreadable YAML, an unknown key, a
            malformed entry, an empty range, a kind that does not fit the key's type, or an end value
            or choice that the configuration refuses.
    """
    path = _space_file(space)
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DermogazeError(f"{source}: not valid YAML ({one_line(exc)}); fix the file") from None
    if not isinstance(data, dict) or not data:
        raise DermogazeError(f"{source}: expected a mapping 'section.key: {{KIND: VALUES}}' with at least one key")
    return [_parse_param(str(key), spec, base, source) for key, spec in data.items()]


def _parse_param(key: str, spec: Any, base: Config, source: str) -> Param:
    section, dot, name = key.partition(".")
    if not dot or not name or "." in name:
        raise DermogazeError(f"{source}: {key!r} must be section.key (e.g. train.lr_attention)")
    hint = _field_hint(base, section, name, source)
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise DermogazeError(
            f"{source}: {key} must be one of {{float: [LOW, HIGH]}}, {{log: [LOW, HIGH]}}, {{int: [LOW, HIGH]}}, "
            f"{{categorical: [A, B, ...]}}; got {spec!r}"
        )
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise DermogazeError(f"{source}: {key}: empty {kind} range {values!r} (give a non-empty list)")
    if kind == "categorical":
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            raise DermogazeError(f"{source}: {key}: categorical choices are numbers, text, true/false or empty, "
                                 f"got {values!r}")
        if len({repr(v) for v in values}) != len(values):
            raise DermogazeError(f"{source}: {key}: categorical choices repeat: {values!r}")
        values = [_checked_value(base, section, name, v, source) for v in values]
        return Param(key, kind, tuple(values))
    allowed = set(typing.get_args(hint)) or {hint}
    numeric = float if float in allowed else int if int in allowed else None  # bool is neither here
    if numeric is not (int if kind == "int" else float):
        what = {float: "a number", int: "an integer", None: "not a number"}[numeric]
        use = {float: "float, log or categorical", int: "int or categorical", None: "categorical"}[numeric]
        article = "an" if kind == "int" else "a"
        raise DermogazeError(f"{source}: {key} is {what}, so {article} {kind} range does not fit it (use {use})")
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise DermogazeError(f"{source}: {key}: a {kind} range is [LOW, HIGH] of two numbers, got {values!r}")
    if kind == "int" and not all(isinstance(v, int) for v in values):
        raise DermogazeError(f"{source}: {key}: an int range takes integers, got {values!r}")
    low, high = (v if kind == "int" else float(v) for v in values)
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise DermogazeError(f"{source}: {key}: empty range [{low}, {high}] (LOW must be below HIGH)")
    if kind == "log" and low <= 0:
        raise DermogazeError(f"{source}: {key}: a log range must be above 0, got [{low}, {high}]")
    for v in (low, high):
        _checked_value(base, section, name, v, source)
    return Param(key, kind, (low, high))


def _field_hint(base: Config, section: str, name: str, source: str) -> Any:
    """The type hint of ``section.name``; an unknown section or key fails as in a preset (:func:`merge`)."""
    if section not in {f.name for f in dataclasses.fields(base)}:
        merge(Config(), {section: {}}, source=source)  # raises: unknown section, with the known ones
    hints = typing.get_type_hints(type(getattr(base, section)))
    if name not in hints:
        merge(Config(), {section: {name: None}}, source=source)  # raises: unknown key, with the known ones
    return hints[name]


def _checked_value(base: Config, section: str, name: str, value: Any, source: str) -> Any:
    """``value`` as the configuration stores it, after the type and range checks of a preset's value."""
    cfg = merge(copy.deepcopy(base), {section: {name: value}}, source=source)
    validate(cfg, source=source)
    return getattr(getattr(cfg, section), name)


def parse_objective(text: str) -> dict[str, float]:
    """``"0.7*val_auc+0.3*val_map"`` → ``{"val_auc": 0.7, "val_map": 0.3}``; a bare name weighs 1.

    Raises:
        DermogazeError: an unknown metric, a weight that is not a positive number, or a malformed term.
    """
    weights: dict[str, float] = {}
    for term in text.split("+"):
        match = re.fullmatch(r"\s*(?:([0-9.eE+-]+)\s*\*\s*)?([a-z_]+)\s*", term)
        weight = None
        if match:
            try:
                weight = 1.0 if match.group(1) is None else float(match.group(1))
            except ValueError:
                weight = None
        if not match or weight is None or not (math.isfinite(weight) and weight > 0) or \
                match.group(2) not in OBJECTIVE_METRICS or match.group(2) in weights:
            raise DermogazeError(
                f"--objective {text!r}: expected a metric of {', '.join(OBJECTIVE_METRICS)} or a sum of distinct "
                "weighted ones with positive weights, e.g. 0.7*val_auc+0.3*val_map"
            )
        weights[match.group(2)] = weight
    return weights


def objective_value(weights: Mapping[str, float], row: Mapping[str, Any]) -> float:
    """The objective of one ``metrics.jsonl`` row: ``Σ weight · metric``.

    Raises:
        DermogazeError: a weighed metric the row lacks (``val_map`` of a variant without a structure
            decoder; an AUC of a validation split with one class).
    """
    missing = [m for m in weights if row.get(m) is None]
    if missing:
        raise DermogazeError(
            f"the objective needs {', '.join(missing)}, which epoch {row.get('epoch')} did not produce (val_map "
            "needs a variant with a structure decoder, val_auc and val_ap both classes in the validation split)"
        )
    return float(sum(w * float(row[m]) for m, w in weights.items()))



def one_line(exc: BaseException) -> str:
    """An exception's message on one line (for messages that name a file or a URL)."""
    return " ".join(str(exc).split())
