"""``dermogaze sweep``: trials of an Optuna study until it holds its budget, each a training run.

A sweep trains one run per trial from a base configuration (a preset and overrides) with the
trial's values merged in (:mod:`.space`), and maximises a validation metric. The search engine is
Optuna's, not a home-made one: the TPE sampler, the median pruner on the per-epoch validation
metric, and the relational storage through which several processes share one study (:mod:`.storage`).

Decisions where Optuna and the paper are silent:

- **Value of a trial**: the objective at its kept epoch (``best.pt``: the lowest validation loss),
  the checkpoint one would deploy; the pruner sees the objective of every epoch.
- **Budget**: ``trials`` counts the study's finished (complete or pruned) trials, whichever process
  ran them. A process stops asking when finished, running and queued trials reach the budget, then
  waits for the running ones of other processes (so that a process whose partner died finishes its
  work). Two processes that ask in the same instant for the last place: the later trial (by
  number) is dropped before any training, marked failed with the user attribute ``surplus``.
- **Retries**: a trial whose process died is queued once more by the storage's heartbeat
  (:mod:`.storage`); a trial stopped by Ctrl-C is queued again the same way. Failures of the
  training itself (a diverged run, a missing metric) are not retried; three in a row stop the process.
- **Seeds**: the sampler of each trial is seeded from ``(seed, trials in the study)``, so a sweep is
  repeatable and a resumed one does not replay the draws of its first run; processes that share a
  study should get different ``seed`` values. ``train.seed`` is the base configuration's in every
  trial: trials differ only in the searched values.
- **Trials under torchrun**: with ``launcher`` (e.g. ``torchrun --standalone --nproc-per-node 4``)
  each trial is ``LAUNCHER -m dermogaze train --preset OUT/trial_NNNN/trial.yaml --out
  OUT/trial_NNNN`` in a child process (:mod:`dermogaze.experiments.launch`; its output in
  ``OUT/trial_NNNN/train.log``); the sweep reads the child's ``metrics.jsonl`` after every epoch for
  the pruner and ends the child when a trial is pruned or the sweep dies. Without it, trials train
  inside the sweep process.
"""

from __future__ import annotations

import copy
import logging
import os
import shlex
import signal
import subprocess
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from ...config import Config, merge, save_config, validate
from ...errors import DermogazeError
from ...files import read_jsonl
from ...interrupt import check as check_interrupt
from ...training import train
from ..launch import start_child, train_command
from .space import OBJECTIVE_METRICS, Param, load_space, objective_value, one_line, parse_objective
from .storage import (
    check_owner,
    claim_out,
    open_storage,
    open_study,
    require_optuna,
    retry_once,
    study_record,
    trial_folder,
)

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

#: Errors that fail one trial (recorded in its ``error`` attribute) without stopping the sweep.
TRIAL_ERRORS = (DermogazeError, torch.OutOfMemoryError)
#: Consecutive failed trials after which a sweep process stops.
MAX_CONSECUTIVE_FAILURES = 3


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
    optuna = require_optuna()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DermogazeError(
            "run dermogaze sweep as one process, not under torchrun: give the torchrun command as --launcher, and "
            "each trial trains under it"
        )
    if not base.data.cache:
        raise DermogazeError("no training data: pass --data CACHE (a folder written by 'dermogaze data prepare')")
    from ...data.cache import load_info

    load_info(base.data.cache)  # a missing or unprepared cache fails here, not in every trial
    params = load_space(space, base)
    weights = parse_objective(objective)
    out = Path(out)
    check_owner(out, study, storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = open_storage(storage, heartbeat=heartbeat)
    st = open_study(study, db, study_record(params, objective, base, heartbeat), resume=resume, url=storage)
    st.pruner = optuna.pruners.MedianPruner(n_startup_trials=prune_startup, n_warmup_steps=prune_warmup)
    claim_out(out, st, storage)
    retry = retry_once()
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
            check_interrupt()
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
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = trial.study._storage
    if is_heartbeat_enabled(storage):
        # Optuna's heartbeat thread records its first beat concurrently with this function; a process killed before
        # that beat leaves a RUNNING trial that is never stale (no heartbeat at all), and a resumed sweep would wait
        # for it for ever. One beat now, before any folder of the trial exists, closes that window.
        storage.record_heartbeat(trial._trial_id)
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
        trial.set_user_attr("error", one_line(exc))
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

    The child gets SIGTERM, which torchrun passes to its workers, when the sweep dies (Linux: the
    parent-death signal, :func:`~dermogaze.experiments.launch.start_child`) and when ``report`` raises
    (a pruned trial).
    """
    run.mkdir(parents=True)
    config = run / "trial.yaml"
    save_config(cfg, config)
    command = train_command(["--preset", str(config), "--out", str(run), "--no-progress"], launcher)
    logger.info("trial run: %s", shlex.join(command))
    seen = 0
    with open(run / "train.log", "ab") as log:
        child = start_child(command, log=log, death_signal=signal.SIGTERM)
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
                check_interrupt()
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
