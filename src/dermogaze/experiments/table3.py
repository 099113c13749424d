"""``table3``: the seven Table 3 variants trained with one seed and one budget, evaluated, tabulated.

:func:`run_table3` trains every preset of :data:`TABLE3_PRESETS` (the paper's ablation, in its
order) on one cache with the same configuration overrides (so the same seed, epochs, batch size,
learning rates, image size and width), evaluates each best checkpoint on one split with
:func:`dermogaze.evaluation.compare.compare_runs`, and writes Table 3 for this data::

    OUT/<preset>/            the run folder of each preset (``dermogaze train``'s files)
    OUT/configs/<preset>.yaml  the resolved configuration each preset is trained with
    OUT/logs/<preset>.log    its training output (with ``jobs > 1``, where the terminal is shared)
    OUT/compare_<split>/     the evaluations and the full comparison table (``dermogaze compare``)
    OUT/table3.md, .csv      Table 3: AUC and AP with 95% intervals, the paper's figures beside

Every training is a ``dermogaze train`` process (``sys.executable -m dermogaze``): one at a time,
or ``jobs`` at once, each then with ``cpu_count // jobs`` threads. A training process dies with
the command (:mod:`dermogaze.experiments.launch`), so an interrupted command leaves no orphan
holding a run folder's lock.

Resuming: a rerun with the same arguments looks at each run folder. A preset whose ``last.pt``
holds every epoch is finished and left untouched; one with an earlier epoch continues from it
(``dermogaze train --resume``, the exact-resume machinery of :mod:`dermogaze.training.train`); a
folder with no completed epoch starts afresh. A run folder trained with another configuration than
this command's (other overrides, epochs or cache) is refused, never overwritten. The evaluations
are cheap and always redone.

Decisions where the paper is silent: the budget is the configuration, not a time; the row order
and the paper's figures are those of its Table 3 (ISIC 2017 test set, 600 images); "rank" orders
the variants by AUC, 1 = best.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import DEFAULT_FAITHFULNESS, TABLE3_PRESETS, Config, load_config, save_config
from ..data.cache import load_info
from ..errors import DermogazeError
from ..evaluation.compare import compare_runs
from ..evaluation.tables import format_interval, format_value
from ..files import read_jsonl, write_csv, write_text
from ..interrupt import check as check_interrupt
from ..models import build_model
from ..training.checkpoint import load_checkpoint
from ..training.optim import build_optimizer
from ..training.run_folder import RunWriter
from .launch import start_child, train_command

logger = logging.getLogger(__name__)

#: Table 3 of the paper: preset → (row name, AUC, AP) on the ISIC 2017 test set.
PAPER_TABLE3: dict[str, tuple[str, float, float]] = {
    "vgg": ("VGG", 0.8212, 0.5892),
    "vgg_gap": ("VGG_GAP", 0.8661, 0.6579),
    "vgg_attconvlstm": ("VGG_AttentiveConvLSTM", 0.8341, 0.5460),
    "vgg_attconvlstm_gap": ("VGG_AttentiveConvLSTM_GAP", 0.8477, 0.6216),
    "deco_gap_3": ("VGG_AttentiveConvLSTM_Deco_GAP_3", 0.8291, 0.5648),
    "deco_gap_5": ("VGG_AttentiveConvLSTM_Deco_GAP_5", 0.8256, 0.5576),
    "deco_gap_17": ("VGG_AttentiveConvLSTM_Deco_GAP_17", 0.8473, 0.5947),
}
#: Configuration keys that change how a run is executed, not what it computes (ignored when a
#: run folder's configuration is checked against the command's).
RUNTIME_KEYS = (("data", "workers"), ("data", "pin_memory"), ("train", "device"))


@dataclasses.dataclass
class _Preset:
    """One preset of the experiment: its configuration, run folder and what is left to do."""

    name: str
    cfg: Config
    run: Path
    done_epochs: int  # completed epochs in the run folder's last.pt (0 when none)
    stale: bool  # the folder holds files of a run with no completed epoch

    @property
    def finished(self) -> bool:
        return self.done_epochs >= self.cfg.train.epochs


def preset_config(preset: str, cache: str | Path, overrides: Sequence[str] = (), *, epochs: int | None = None,
                  device: str | None = None, amp: str | None = None, workers: int | None = None) -> Config:
    """The configuration ``preset`` is trained with: the preset, the overrides, then the explicit options.

    Raises:
        DermogazeError: a bad override or option value (:func:`dermogaze.config.validate`).
    """
    extra = [f"data.cache={Path(cache)}"] + ([f"train.epochs={epochs}"] if epochs is not None else [])
    cfg = load_config(preset, [*overrides, *extra])
    for section, key, value in (("train", "device", device), ("train", "amp", amp), ("data", "workers", workers)):
        if value is not None:
            setattr(getattr(cfg, section), key, value)
    return cfg


def _check_trainable(preset: str, cfg: Config) -> None:
    """Build the network on the meta device and its optimiser: a configuration that cannot train fails here,
    before any preset is trained (e.g. ``model.skip`` for a variant without decoder, ``lr_encoder=0``
    without pretrained weights)."""
    kwargs = dict(dataclasses.asdict(cfg.model), weights=None)  # the weights file is the training's to read
    kwargs.pop("name")
    try:
        with torch.device("meta"):
            build_optimizer(build_model(cfg.model.name, **kwargs), cfg)
    except DermogazeError as exc:
        raise DermogazeError(f"preset {preset} with these options: {exc}") from None


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """A stored configuration without :data:`RUNTIME_KEYS`."""
    out = {section: dict(values) for section, values in config.items()}
    for section, key in RUNTIME_KEYS:
        out.get(section, {}).pop(key, None)
    return out


def _differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """``section.key stored vs wanted`` for every key that differs between two comparable configurations."""
    return [
        f"{section}.{key} {a.get(section, {}).get(key)!r} vs {b[section].get(key)!r}"
        for section in b
        for key in sorted(set(a.get(section, {})) | set(b[section]))
        if a.get(section, {}).get(key) != b[section].get(key)
    ]


def _inspect(name: str, cfg: Config, run: Path) -> _Preset:
    """What the run folder of ``name`` holds, checked against the configuration it must have been trained with.

    Raises:
        DermogazeError: the folder holds a run of another configuration, or is not a folder.
    """
    if run.exists() and not run.is_dir():
        raise DermogazeError(f"{run} is a file, not a run folder: choose another --out")
    writer = RunWriter(run)
    if not writer.last.is_file():
        return _Preset(name, cfg, run, 0, stale=bool(writer.existing()))
    ckpt = load_checkpoint(writer.last)
    stored, wanted = _comparable(ckpt["config"]), _comparable(cfg.to_dict())
    if stored != wanted:
        diff = "; ".join(_differences(stored, wanted)[:4])
        raise DermogazeError(
            f"{run} holds a {name} run trained with another configuration ({diff}; stored vs this command): "
            "rerun with that run's options to resume it, choose another --out, or delete the folder to retrain it"
        )
    return _Preset(name, cfg, run, int(ckpt["epoch"]), stale=False)


def _train_command(p: _Preset, config_file: Path, *, progress: bool) -> list[str]:
    """The ``dermogaze train`` command line that finishes preset ``p``."""
    args = ["--device", p.cfg.train.device, "--workers", str(p.cfg.data.workers)]
    if p.done_epochs:
        args += ["--resume", str(p.run)]
    else:
        args += ["--preset", str(config_file), "--out", str(p.run)] + (["--overwrite"] if p.stale else [])
    return train_command(args + ([] if progress else ["--no-progress"]))


def _launch(p: _Preset, out: Path, *, jobs: int, progress: bool) -> tuple[subprocess.Popen, Any]:
    """Start the training process of ``p``: output to the terminal (one job) or to ``OUT/logs/<preset>.log``."""
    config_file = out / "configs" / f"{p.name}.yaml"
    save_config(p.cfg, config_file)
    env = dict(os.environ)
    log = None
    if jobs > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
        (out / "logs").mkdir(parents=True, exist_ok=True)
        log = open(out / "logs" / f"{p.name}.log", "ab")  # noqa: SIM115 -- closed when the process ends
    proc = start_child(_train_command(p, config_file, progress=progress and jobs == 1), log=log, env=env)
    return proc, log


def _train_all(todo: list[_Preset], out: Path, *, jobs: int, order: Sequence[str], progress: bool) -> None:
    """Run the training processes of ``todo``, at most ``jobs`` at once; stop them all on an error or Ctrl-C.

    Raises:
        DermogazeError: a training process failed (the others are let finish; nothing new starts).
    """
    waiting = list(todo)
    running: dict[str, tuple[subprocess.Popen, Any, float]] = {}  # preset → (process, its log or None, start)
    failed: list[str] = []
    try:
        while waiting or running:
            while waiting and len(running) < jobs and not failed:
                p = waiting.pop(0)
                what = f"resuming after epoch {p.done_epochs} of {p.cfg.train.epochs}" if p.done_epochs else (
                    f"training {p.cfg.train.epochs} epochs")
                proc, log = _launch(p, out, jobs=jobs, progress=progress)
                where = f" (log {out / 'logs' / (p.name + '.log')})" if log else ""
                logger.info("table3 [%d/%d] %s: %s%s", order.index(p.name) + 1, len(order), p.name, what, where)
                running[p.name] = (proc, log, time.perf_counter())
            time.sleep(0.2)
            check_interrupt()
            for name, (proc, log, tic) in list(running.items()):
                status = proc.poll()
                if status is None:
                    continue
                del running[name]
                if log:
                    log.close()
                if status == 0:
                    logger.info("table3 %s: trained (%.0f s)", name, time.perf_counter() - tic)
                else:
                    where = f"see {out / 'logs' / (name + '.log')}" if log else "see its error above"
                    failed.append(f"{name} (status {status}; {where})")
            if failed:
                waiting.clear()
    finally:
        for proc, log, _tic in running.values():  # an exception or Ctrl-C: stop every training process
            proc.terminate()
            proc.wait()
            if log:
                log.close()
    if failed:
        raise DermogazeError("table3: the training of " + ", ".join(failed) + " failed; fix it and rerun to resume")


def run_table3(
    cache: str | Path,
    out_dir: str | Path,
    *,
    overrides: Sequence[str] = (),
    epochs: int | None = None,
    jobs: int = 1,
    split: str = "test",
    presets: Sequence[str] = TABLE3_PRESETS,
    device: str | None = None,
    amp: str | None = None,
    workers: int | None = None,
    n_resamples: int = 2000,
    faithfulness: int | None = DEFAULT_FAITHFULNESS,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, evaluate and tabulate the Table 3 presets (module docstring); resumes where an earlier call stopped.

    Args:
        cache: the prepared cache every preset trains on and is evaluated on.
        out_dir: the experiment folder.
        overrides: ``section.key=value`` applied to every preset (the shared budget, e.g. ``model.width=0.25``).
        epochs: ``train.epochs`` of every preset (default: the presets', i.e. the paper's 20).
        jobs: training processes at once.
        split: the split of ``cache`` the table is computed on.
        presets: a subset of :data:`TABLE3_PRESETS` (in that order).
        device, amp, workers: the training and evaluation runtime (None: the configuration's).
        n_resamples: of the bootstrap intervals.
        faithfulness: images that get the costly explanation measures in the evaluations.
        progress: progress bars (one job only: parallel trainings write to their logs).

    Returns:
        ``{"rows": [...], "files": {"markdown", "csv", "compare_markdown", "compare_csv"}, "markdown": str,
        "runs": {preset: run folder}}``.

    Raises:
        DermogazeError: no preset or an unknown one, a configuration that cannot train, a missing cache or split,
            a run folder of another configuration, a failed training.
    """
    if not presets:
        raise DermogazeError(f"no preset to run: name some of {', '.join(TABLE3_PRESETS)} (comma-separated)")
    unknown = [p for p in presets if p not in TABLE3_PRESETS]
    if unknown:
        raise DermogazeError(f"not a Table 3 preset: {', '.join(unknown)} (they are {', '.join(TABLE3_PRESETS)})")
    if jobs < 1:
        raise DermogazeError(f"jobs must be at least 1, got {jobs}")
    presets = [p for p in TABLE3_PRESETS if p in presets]
    cache, out = Path(cache).resolve(), Path(out_dir)
    info = load_info(cache)
    if split not in info["splits"]:
        raise DermogazeError(f"cache {cache} has no split {split!r} (it holds {', '.join(info['splits'])})")
    configs = {
        p: preset_config(p, cache, overrides, epochs=epochs, device=device, amp=amp, workers=workers) for p in presets
    }
    for p, cfg in configs.items():
        _check_trainable(p, cfg)
    states = [_inspect(p, cfg, out / p) for p, cfg in configs.items()]
    for s in states:
        if s.finished:
            logger.info("table3 %s: already trained (%d epochs), kept as it is", s.name, s.done_epochs)
    _train_all([s for s in states if not s.finished], out, jobs=jobs, order=presets, progress=progress)

    logger.info("table3: evaluating %d presets on %s/%s", len(states), cache, split)
    runtime = states[0].cfg
    comparison = compare_runs(
        [s.run for s in states], split=split, cache=cache, out_dir=out / f"compare_{split}",
        device=runtime.train.device, amp=runtime.train.amp, workers=runtime.data.workers, n_resamples=n_resamples,
        faithfulness=faithfulness, progress=progress,
    )
    rows = table3_rows(states, comparison["rows"])
    first = comparison["rows"][0]
    markdown = table3_markdown(rows, cache=cache, split=split, n=first["n"], n_pos=first["n_pos"],
                               overrides=overrides, cfg=states[0].cfg)
    files = {
        "markdown": write_text(markdown, out / "table3.md"),
        "csv": write_csv(list(rows[0]), [list(r.values()) for r in rows], out / "table3.csv"),
        "compare_markdown": comparison["files"]["markdown"],
        "compare_csv": comparison["files"]["csv"],
    }
    return {"rows": rows, "files": files, "markdown": markdown, "runs": {s.name: s.run for s in states}}


def _ranks(values: Sequence[float | None]) -> list[int | None]:
    """Rank of each value, 1 = largest (ties share the better rank); None stays None."""
    known = [v for v in values if v is not None]
    return [None if v is None else 1 + sum(w > v for w in known) for v in values]


def table3_rows(states: Sequence[_Preset], compare_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per preset (the CSV's columns): this data's AUC and AP with intervals, the paper's beside."""
    rows = []
    for s, c in zip(states, compare_rows, strict=True):
        name, paper_auc, paper_ap = PAPER_TABLE3[s.name]
        history = read_jsonl(s.run / "metrics.jsonl")
        rows.append({
            "preset": s.name,
            "paper_row": name,
            "auc": c["auc"], "auc_low": c["auc_low"], "auc_high": c["auc_high"],
            "ap": c["ap"], "ap_low": c["ap_low"], "ap_high": c["ap_high"],
            "delta_auc_vs_first": c["delta_auc"], "delong_p_vs_first": c["delong_p"],
            "paper_auc": paper_auc, "paper_ap": paper_ap,
            "epochs": len(history),
            "best_epoch": c["best_epoch"],
            "train_s": round(sum(r.get("time_s", 0.0) for r in history), 1),
        })
    for key in ("auc", "paper_auc"):
        for row, rank in zip(rows, _ranks([r[key] for r in rows]), strict=True):
            row[f"rank_{key}"] = rank
    return rows


def table3_markdown(
    rows: Sequence[Mapping[str, Any]], *, cache: Path, split: str, n: int, n_pos: int, overrides: Sequence[str],
    cfg: Config,
) -> str:
    """Table 3 for this data as Markdown: the paper's columns, with intervals, ranks and the paper's figures."""
    t, m = cfg.train, cfg.model
    lines = [
        f"# Table 3 on {cache} ({split} split: {n} images, {n_pos} melanoma)",
        "",
        f"Every variant trained with seed {t.seed}, {t.epochs} epochs, batch {t.batch_size}, learning rates "
        f"{t.lr_encoder:g}/{t.lr_attention:g}/{t.lr_branches:g} (encoder/attention/branches, {t.lr_schedule}), "
        f"{m.image_size} px, width {m.width:g}, T = {m.steps}; each preset's own wiring and structure balancing"
        + (f"; overrides: `{' '.join(overrides)}`" if overrides else "") + ".",
        "AUC and AP of the best checkpoint (lowest validation loss) with stratified bootstrap 95% intervals; "
        "ΔAUC and DeLong's p against the first row; rank by AUC (1 = best); the paper's figures are on the "
        "ISIC 2017 test set (600 images).",
        "",
        "| variant | Table 3 row | AUC [95% CI] | AP [95% CI] | ΔAUC vs first (p) | rank | best epoch | "
        "train time | paper AUC | paper AP | paper rank |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, r in enumerate(rows):
        delta = "—" if k == 0 else (
            f"{format_value(r['delta_auc_vs_first'], 3)} ({format_value(r['delong_p_vs_first'], 3)})")
        lines.append(
            f"| `{r['preset']}` | {r['paper_row']} | {format_interval(r['auc'], (r['auc_low'], r['auc_high']))} | "
            f"{format_interval(r['ap'], (r['ap_low'], r['ap_high']))} | {delta} | {format_value(r['rank_auc'])} | "
            f"{r['best_epoch']} | {r['train_s']:.0f} s | {r['paper_auc']:.4f} | {r['paper_ap']:.4f} | "
            f"{r['rank_paper_auc']} |"
        )
    return "\n".join(lines) + "\n"
