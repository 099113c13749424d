"""Hyperparameter sweeps with Optuna: a search space over any ``section.key`` of the configuration.

A sweep trains one run per trial from a base configuration (a preset and overrides) with the
trial's values merged in, and maximises a validation metric. The search engine is Optuna's, not a
home-made one: the TPE sampler, the median pruner on the per-epoch validation metric, and the
relational storage (SQLite, PostgreSQL, MySQL) through which any number of ``dermogaze sweep``
processes, on one machine or many, share one study.

The search space is a YAML mapping ``section.key: {KIND: VALUES}``::

    train.lr_attention: {log: [1.0e-4, 1.0e-2]}     # log-uniform float in [LOW, HIGH]
    loss.attention:     {float: [0.0, 1.0]}         # uniform float
    model.steps:        {int: [2, 5]}               # integer, both ends included
    loss.balancing:     {categorical: [batch, none]}

Every key is checked against the configuration dataclasses before any trial runs
(:func:`load_space`): an unknown key, an empty range, a kind that does not fit the key's type,
or an end value that :func:`dermogaze.config.validate` refuses is one line naming the file.

Decisions where Optuna and the paper are silent:

- **Objective**: ``val_auc`` (default), ``val_ap``, ``val_map`` or a weighted sum such as
  ``0.7*val_auc+0.3*val_map``, maximised. A trial's value is the objective at its kept epoch
  (``best.pt``: the lowest validation loss), the checkpoint one would deploy; the pruner sees the
  objective of every epoch.
- **Budget**: ``trials`` counts the study's finished (complete or pruned) trials, whichever process
  ran them. A process stops asking when finished, running and queued trials reach the budget, then
  waits for the running ones of other processes (so that a process whose partner died finishes its
  work). Two processes that ask in the same instant for the last place: the later trial (by
  number) is dropped before any training, marked failed with the user attribute ``surplus``.
- **Kill safety**: the storage's heartbeat (every ``heartbeat`` seconds, stale after twice that)
  marks a trial whose process died as failed, and Optuna's
  :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` queues it once more with the same
  values; a trial stopped by Ctrl-C is queued again the same way. Failures of the training itself
  (a diverged run, a missing metric) are not retried; three in a row stop the process.
- **Run folders**: ``OUT/trial_NNNN`` by trial number (a retry has a new number, hence a new
  folder); a folder that exists is never reused. ``OUT/sweep.json`` names the study that owns
  ``OUT``; another study's folder is refused.
- **Seeds**: the sampler of each trial is seeded from ``(seed, trials in the study)``, so a sweep is
  repeatable and a resumed one does not replay the draws of its first run; processes that share a
  study should get different ``seed`` values. ``train.seed`` is the base configuration's in every
  trial: trials differ only in the searched values.
- **Trials under torchrun**: with ``launcher`` (e.g. ``torchrun --standalone --nproc-per-node 4``)
  each trial is ``LAUNCHER -m dermogaze train --preset OUT/trial_NNNN/trial.yaml --out
  OUT/trial_NNNN`` in a child process (its output in ``OUT/trial_NNNN/train.log``); the sweep
  reads the child's ``metrics.jsonl`` after every epoch for the pruner and ends the child when a
  trial is pruned or the sweep dies. Without it, trials train inside the sweep process.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import typing
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from .config import Config, merge, save_config, validate
from .errors import DermogazeError
from .io import read_jsonl, write_csv, write_json, write_text
from .training import train

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

#: Metrics of a ``metrics.jsonl`` row an objective may weigh (all: higher is better).
OBJECTIVE_METRICS = ("val_auc", "val_ap", "val_map")
#: Kinds of a search-space entry.
KINDS = ("float", "log", "int", "categorical")
#: Errors that fail one trial (recorded in its ``error`` attribute) without stopping the sweep.
TRIAL_ERRORS = (DermogazeError, torch.OutOfMemoryError)
#: Consecutive failed trials after which a sweep process stops.
MAX_CONSECUTIVE_FAILURES = 3


# ----------------------------------------------------------------------------------------------
# Search space and objective
# ----------------------------------------------------------------------------------------------
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
        raise DermogazeError(f"{source}: not valid YAML ({_one_line(exc)}); fix the file") from None
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


# ----------------------------------------------------------------------------------------------
# Storage and study
# ----------------------------------------------------------------------------------------------
def display_url(url: str) -> str:
    """``url`` without its password (for messages and ``sweep.json``)."""
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def open_storage(url: str, *, heartbeat: int | None = None) -> optuna.storages.RDBStorage:
    """Optuna's relational storage at ``url``; with ``heartbeat`` seconds, dead trials are failed and retried once.

    A ``sqlite:///PATH`` file's folder is created. A plain ``postgresql://`` URL uses psycopg2 (the
    driver of the ``sweep`` extra; SQLAlchemy's default for it is psycopg 3). The heartbeat makes a
    trial whose process stops beating for ``2 * heartbeat`` seconds stale: the next process to ask
    for a trial marks it failed and queues it again (:class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`, once).

    Raises:
        DermogazeError: a malformed URL, or a database that cannot be reached or opened.
    """
    import optuna
    import sqlalchemy.exc

    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine_url = re.sub(r"^postgres(ql)?://", "postgresql+psycopg2://", url)
    kwargs: dict[str, Any] = {}
    if heartbeat is not None:
        kwargs = dict(
            heartbeat_interval=heartbeat,
            grace_period=2 * heartbeat,
            heartbeat_stale_trial_callback=_retry_once(),
        )
    try:
        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(engine_url, **kwargs)
            except sqlalchemy.exc.IntegrityError:  # another process created the tables at the same instant
                if attempt == 4:
                    raise
                time.sleep(0.5 + attempt)
        raise AssertionError("unreachable")
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ValueError) as exc:
        raise DermogazeError(
            f"--storage {display_url(url)}: not a usable database URL ({_one_line(exc)}); e.g. "
            "sqlite:///runs/sweeps.db or postgresql://USER:PASSWORD@HOST:5432/DB"
        ) from None
    except ImportError as exc:
        raise DermogazeError(
            f"--storage {display_url(url)}: the database driver is missing ({_one_line(exc.__cause__ or exc)}); "
            "install it: pip install 'dermogaze[sweep]' for postgresql://, pymysql for mysql+pymysql://"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise DermogazeError(f"--storage {display_url(url)}: cannot open the database ({_one_line(exc)})") from None


def _retry_once() -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Optuna's callback that queues a failed trial again with the same values, once."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)


def _study_record(params: Sequence[Param], objective: str, base: Config, heartbeat: int) -> dict[str, Any]:
    """What a study is for (stored in it; a process that joins must agree): space, objective, base configuration,
    and the heartbeat (a process with a shorter one would take the others' trials for dead).

    The base configuration leaves out what may differ between machines: ``data`` and ``train.device``.
    """
    cfg = base.to_dict()
    cfg.pop("data")
    cfg["train"].pop("device")
    space: dict[str, Any] = {}
    for p in params:
        space.update(p.to_dict())
    return {"space": space, "objective": objective, "base_config": cfg, "heartbeat": heartbeat}


def _open_study(
    name: str, storage: optuna.storages.RDBStorage, record: dict[str, Any], *, resume: bool, url: str
) -> optuna.Study:
    """Create the study, or with ``resume`` continue or join it; a study made for another search is refused."""
    import optuna

    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        study.set_user_attr("dermogaze_sweep", record)
        return study
    except optuna.exceptions.DuplicatedStudyError:
        if not resume:
            raise DermogazeError(
                f"study {name!r} already exists in {display_url(url)}: continue it (or join it from another process) "
                "with --resume, or choose another --study"
            ) from None
    study = optuna.load_study(study_name=name, storage=storage)
    for _ in range(50):  # the creating process writes the record just after the study
        stored = study.user_attrs.get("dermogaze_sweep")
        if stored is not None:
            break
        time.sleep(0.2)
    if stored is not None and stored != record:
        differs = [k for k in record if stored.get(k) != record[k]]
        raise DermogazeError(
            f"study {name!r} in {display_url(url)} was made with another {' and '.join(differs).replace('_', ' ')} "
            f"(stored: {', '.join(f'{k}={stored.get(k)!r}' for k in differs)}); resume it with the same preset, "
            "overrides, --space, --objective and --heartbeat, or choose another --study"
        )
    return study


def _check_owner(out: Path, name: str, url: str) -> dict[str, str]:
    """``OUT/sweep.json``'s record for this study; a folder that another study owns is refused."""
    record = {"study": name, "storage": display_url(url)}
    marker = out / "sweep.json"
    if marker.is_file():
        owner = json.loads(marker.read_text())
        if owner.get("study") != record["study"] or owner.get("storage") != record["storage"]:
            raise DermogazeError(
                f"--out {out} holds the trials of study {owner.get('study')!r} in {owner.get('storage')}: choose "
                "another --out"
            )
    return record


def _claim_out(out: Path, study: optuna.Study, url: str) -> None:
    """Make ``OUT`` this study's folder (``sweep.json``); refuse one holding trial folders the study does not know."""
    record = _check_owner(out, study.study_name, url)
    numbers = {t.number for t in study.get_trials(deepcopy=False)}
    strangers = sorted(p.name for p in out.glob("trial_*") if p.is_dir() and _trial_number(p) not in numbers)
    if strangers:
        raise DermogazeError(
            f"--out {out} holds trial folders that study {study.study_name!r} does not know ({', '.join(strangers[:3])}"
            f"{', ...' if len(strangers) > 3 else ''}): trial folders are never reused; choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_json(record, out / "sweep.json")


def _trial_number(path: Path) -> int | None:
    tail = path.name.removeprefix("trial_")
    return int(tail) if tail.isdigit() else None


def trial_folder(out: str | Path, number: int) -> Path:
    """The run folder of trial ``number``."""
    return Path(out) / f"trial_{number:04d}"


# ----------------------------------------------------------------------------------------------
# One trial
# ----------------------------------------------------------------------------------------------
class _Surplus(DermogazeError):
    """The budget was already taken when this trial was created (another process asked at the same instant)."""


def _objective(
    trial: optuna.Trial,
    *,
    base: Config,
    params: Sequence[Param],
    weights: Mapping[str, float],
    budget: int,
    out: Path,
    launcher: str | None,
    progress: bool,
) -> float:
    """Train the trial's configuration; report every epoch's objective to the pruner; return the kept epoch's."""
    import optuna

    ahead = [
        t for t in trial.study.get_trials(deepcopy=False, states=_live_states())
        if t.number < trial.number and not t.user_attrs.get("surplus")
    ]
    if len(ahead) >= budget:
        trial.set_user_attr("surplus", True)
        raise _Surplus(f"trial {trial.number} is beyond the budget of {budget} trials (another process took it)")
    cfg = copy.deepcopy(base)
    values = {p.key: p.suggest(trial) for p in params}
    updates: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, name = key.split(".")
        updates.setdefault(section, {})[name] = value
    validate(merge(cfg, updates, source=f"trial {trial.number}"), source=f"trial {trial.number}")
    run = trial_folder(out, trial.number)
    trial.set_user_attr("run", str(run))
    trial.set_user_attr("config", cfg.to_dict())
    if run.exists():
        raise DermogazeError(f"{run} exists: a trial folder is never reused; remove it or choose another --out")

    def report(epoch: int, row: Mapping[str, Any]) -> None:
        value = objective_value(weights, row)
        trial.report(value, epoch)
        if trial.should_prune():
            trial.set_user_attr("epochs", epoch)
            raise optuna.TrialPruned(f"objective {value:.4f} after epoch {epoch} is below the median of earlier trials")

    logger.info("trial %d: %s", trial.number, ", ".join(f"{k}={v!r}" for k, v in values.items()))
    try:
        if launcher:
            _train_in_child(cfg, run, launcher, report)
        else:
            train(cfg, run, progress=progress, on_epoch=report)
    except TRIAL_ERRORS as exc:
        trial.set_user_attr("error", _one_line(exc))
        raise
    rows = read_jsonl(run / "metrics.jsonl")
    kept = [r for r in rows if r.get("best")][-1]  # best.pt's epoch: the last that improved the validation loss
    trial.set_user_attr("epochs", len(rows))
    trial.set_user_attr("best_epoch", kept["epoch"])
    trial.set_user_attr("metrics", {k: kept.get(k) for k in ("val_loss", *OBJECTIVE_METRICS)})
    return objective_value(weights, kept)


def _train_in_child(
    cfg: Config, run: Path, launcher: str, report: Callable[[int, Mapping[str, Any]], None]
) -> None:
    """``LAUNCHER -m dermogaze train`` on the trial's configuration; each new epoch row goes to ``report``.

    The child ends with the sweep (Linux: the parent-death signal) and when ``report`` raises
    (a pruned trial): SIGTERM, which torchrun passes to its workers.
    """
    run.mkdir(parents=True)
    config = run / "trial.yaml"
    save_config(cfg, config)
    command = [*shlex.split(launcher), "-m", "dermogaze", "train", "--preset", str(config), "--out", str(run),
               "--no-progress"]
    logger.info("trial run: %s", shlex.join(command))
    seen = 0
    with open(run / "train.log", "ab") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        try:
            while True:
                finished = child.poll() is not None
                rows = read_jsonl(run / "metrics.jsonl")
                for row in rows[seen:]:
                    report(int(row["epoch"]), row)
                seen = len(rows)
                if finished:
                    break
                time.sleep(0.5)
        finally:
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
    if child.returncode != 0:
        tail = (run / "train.log").read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise DermogazeError(f"{shlex.join(command)} exited with status {child.returncode}: {tail[0]}")


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the sweep process dies (Linux ``PR_SET_PDEATHSIG``; else nothing)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


# ----------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------
def _live_states() -> tuple[Any, ...]:
    """States of the trials that hold a place in the budget: finished, running or queued."""
    from optuna.trial import TrialState

    return TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING


def run_sweep(
    base: Config,
    space: str | Path,
    *,
    study: str,
    storage: str,
    trials: int,
    out: str | Path,
    objective: str = "val_auc",
    resume: bool = False,
    seed: int = 0,
    heartbeat: int = 10,
    prune_startup: int = 5,
    prune_warmup: int = 0,
    launcher: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run trials of the study ``study`` until it holds ``trials`` finished ones (see the module docstring).

    Args:
        base: the configuration every trial starts from (``data.cache`` set).
        space: a search-space YAML file or the name of a shipped one.
        study: the study's name in ``storage``.
        storage: an SQLAlchemy URL: ``sqlite:///runs/sweeps.db``, ``postgresql://...``, ``mysql+pymysql://...``.
        trials: the study's budget of finished (complete or pruned) trials.
        out: the folder of the trials' run folders.
        objective: ``val_auc``, ``val_ap``, ``val_map`` or a weighted sum (:func:`parse_objective`).
        resume: continue the study, or join it from another process; without it an existing study is refused.
        seed: seeds the sampler (with the number of trials in the study).
        heartbeat: seconds between a running trial's heartbeats; a trial silent for twice that is retried.
        prune_startup: trials that finish before the median pruner prunes any.
        prune_warmup: epochs of a trial before it may be pruned.
        launcher: run each trial as ``LAUNCHER -m dermogaze train`` (e.g. a torchrun command) instead of in-process.
        progress: progress bars.

    Returns:
        ``study`` (name), ``ran`` (trial numbers this process finished), ``finished`` (the study's finished
        trials), ``best`` (``{"number", "value", "params"}`` of the best complete trial, or None).

    Raises:
        DermogazeError: a bad search space, objective, storage or output folder; a study made for another
            search; three failed trials in a row in this process.
    """
    optuna = _require_optuna()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DermogazeError(
            "run dermogaze sweep as one process, not under torchrun: give the torchrun command as --launcher, and "
            "each trial trains under it"
        )
    if not base.data.cache:
        raise DermogazeError("no training data: pass --data CACHE (a folder written by 'dermogaze data prepare')")
    from .data.cache import load_info

    load_info(base.data.cache)  # a missing or unprepared cache fails here, not in every trial
    params = load_space(space, base)
    weights = parse_objective(objective)
    out = Path(out)
    _check_owner(out, study, storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = open_storage(storage, heartbeat=heartbeat)
    st = _open_study(study, db, _study_record(params, objective, base, heartbeat), resume=resume, url=storage)
    st.pruner = optuna.pruners.MedianPruner(n_startup_trials=prune_startup, n_warmup_steps=prune_warmup)
    _claim_out(out, st, storage)
    retry = _retry_once()
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

    def objective_fn(trial: optuna.Trial) -> float:
        current.append(trial.number)
        return _objective(trial, base=base, params=params, weights=weights, budget=trials, out=out,
                          launcher=launcher, progress=progress)

    current: list[int] = []  # the number of the trial in progress, while one is
    ran: list[int] = []
    failures: list[str] = []
    bar = tqdm(total=trials, desc=f"sweep {study}", unit="trial", disable=not progress, leave=True)
    try:
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(st)
            all_trials = st.get_trials(deepcopy=False)
            counts = Counter(t.state for t in all_trials if not t.user_attrs.get("surplus"))
            bar.n = min(trials, sum(counts[s] for s in finished_states))
            bar.refresh()
            live = sum(counts[s] for s in _live_states())
            if live < trials or counts[optuna.trial.TrialState.WAITING]:
                st.sampler = optuna.samplers.TPESampler(seed=_trial_seed(seed, len(all_trials)))
                try:
                    st.optimize(objective_fn, n_trials=1, catch=TRIAL_ERRORS, gc_after_trial=True)
                except KeyboardInterrupt:
                    stopped = st.trials[current[-1]] if current else None
                    if stopped is not None and stopped.state == optuna.trial.TrialState.FAIL:
                        retry(st, stopped)  # Optuna marked it failed: queue it again, as for a dead process
                    raise
                frozen = st.trials[current.pop()]
                logger.info("trial %d: %s%s", frozen.number, frozen.state.name.lower(),
                            "" if frozen.value is None else f", {objective} = {frozen.value:.4f}")
                if frozen.state in finished_states:
                    ran.append(frozen.number)
                    failures.clear()
                elif frozen.state == optuna.trial.TrialState.FAIL and not frozen.user_attrs.get("surplus"):
                    failures.append(frozen.user_attrs.get("error", "unknown error"))
                    logger.warning("trial %d failed: %s", frozen.number, failures[-1])
                    if len(failures) >= MAX_CONSECUTIVE_FAILURES:
                        raise DermogazeError(
                            f"{len(failures)} trials in a row failed in this process; the last: {failures[-1]}"
                        )
            elif counts[optuna.trial.TrialState.RUNNING]:
                running = counts[optuna.trial.TrialState.RUNNING]
                logger.info("waiting for %d running trial(s) of other processes", running)
                time.sleep(heartbeat)
            else:
                break
    finally:
        bar.close()
    finished = [t for t in st.get_trials(deepcopy=False, states=finished_states) if not t.user_attrs.get("surplus")]
    complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    return {
        "study": study,
        "ran": ran,
        "finished": len(finished),
        "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params},
    }


def _trial_seed(seed: int, n_trials: int) -> int:
    """The sampler seed of the next trial: independent streams per (sweep seed, trials so far)."""
    return int(np.random.SeedSequence([seed, n_trials]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------
# sweep show
# ----------------------------------------------------------------------------------------------
def show_sweep(study: str, storage: str, out: str | Path) -> dict[str, Any]:
    """The trials table (``trials.csv``, ``trials.md``), the best configuration as a preset (``best.yaml``) and
    Optuna's parameter-importance and optimisation-history plots (``importance.png``, ``history.png``).

    Returns:
        ``table`` (the trials table as aligned text), ``files`` (name → path; a plot that needs more
        complete trials is left out and named in ``notes``), ``notes``.

    Raises:
        DermogazeError: no such study in ``storage``.
    """
    optuna = _require_optuna()
    import optuna.visualization.matplotlib as ovm

    from .plots import save_figure

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sqlite_file = storage.removeprefix("sqlite:///")
    if storage.startswith("sqlite:///") and not Path(sqlite_file).is_file():
        raise DermogazeError(f"--storage {storage}: {sqlite_file} does not exist (no sweep has written it)")
    db = open_storage(storage)
    try:
        st = optuna.load_study(study_name=study, storage=db)
    except KeyError:
        names = optuna.get_all_study_names(db)
        raise DermogazeError(
            f"no study {study!r} in {display_url(storage)} (it holds: {', '.join(names) or 'none'})"
        ) from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header, rows = _trials_table(st)
    files = {"trials.csv": write_csv(header, rows, out / "trials.csv")}
    files["trials.md"] = write_text(_markdown(header, rows, st), out / "trials.md")
    notes: list[str] = []
    complete = st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if complete:
        files["best.yaml"] = write_text(_best_preset(st), out / "best.yaml")
    else:
        notes.append("no complete trial yet: no best.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            files["history.png"] = save_figure(ovm.plot_optimization_history(st).figure, out / "history.png")
        except ValueError as exc:
            notes.append(f"no history.png: {_one_line(exc)}")
        if len(complete) >= 2:
            files["importance.png"] = save_figure(ovm.plot_param_importances(st).figure, out / "importance.png")
        else:
            notes.append("parameter importance needs at least 2 complete trials: no importance.png")
    return {"table": _aligned(header, rows), "files": files, "notes": notes}


def _trials_table(st: optuna.Study) -> tuple[list[str], list[list[Any]]]:
    """One row per trial: number, state, value, epochs, kept epoch, seconds, each searched key, retry of, run."""
    keys = sorted({k for t in st.trials for k in t.params})
    header = ["trial", "state", "value", "epochs", "best_epoch", "seconds", *keys, "retry_of", "run", "error"]
    rows = []
    for t in st.trials:
        state = t.state.name.lower() + (" (surplus)" if t.user_attrs.get("surplus") else "")
        seconds = None if t.duration is None else round(t.duration.total_seconds(), 1)
        rows.append([
            t.number, state, _fmt(t.value), t.user_attrs.get("epochs"), t.user_attrs.get("best_epoch"), seconds,
            *(_fmt(t.params.get(k)) for k in keys), t.system_attrs.get("failed_trial"), t.user_attrs.get("run"),
            t.user_attrs.get("error"),
        ])
    return header, [["" if v is None else v for v in row] for row in rows]


def _fmt(v: Any) -> Any:
    return f"{v:.4g}" if isinstance(v, float) else v


def _markdown(header: Sequence[str], rows: Sequence[Sequence[Any]], st: optuna.Study) -> str:
    record = st.user_attrs.get("dermogaze_sweep", {})
    lines = [f"# Sweep {st.study_name}", "", f"Objective (maximised): `{record.get('objective', '?')}`", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _aligned(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    shown = [list(header)] + [[str(v) for v in row] for row in rows]
    shown = [row[:-2] for row in shown]  # run folder and error: in the files, too wide for a terminal
    widths = [max(len(r[i]) for r in shown) for i in range(len(shown[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in shown)


def _best_preset(st: optuna.Study) -> str:
    """The best complete trial's configuration as a preset: what differs from the defaults, without the data."""
    best = st.best_trial
    cfg = Config.from_dict(best.user_attrs["config"], source=f"study {st.study_name} trial {best.number}")
    values, defaults = cfg.to_dict(), Config().to_dict()
    values.pop("data")
    values["train"].pop("device")
    preset = {s: {k: v for k, v in sec.items() if v != defaults[s][k]} for s, sec in values.items()}
    preset = {s: sec for s, sec in preset.items() if sec}
    record = st.user_attrs.get("dermogaze_sweep", {})
    head = (
        f"# The best trial of sweep {st.study_name}: trial {best.number}, {record.get('objective', 'objective')} = "
        f"{best.value:.4f}\n# (run folder {best.user_attrs.get('run')}). Train it with:\n"
        "#   dermogaze train --preset best.yaml --data CACHE --out RUN\n"
    )
    return head + yaml.safe_dump(preset, sort_keys=False)


def _require_optuna() -> Any:
    """The ``optuna`` module (an optional dependency: the ``sweep`` extra)."""
    try:
        import optuna
    except ImportError:
        raise DermogazeError("dermogaze sweep needs Optuna: pip install 'dermogaze[sweep]'") from None
    return optuna


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
