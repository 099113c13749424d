"""``dermogaze sweep show``: a study's trials as a table, its best configuration as a preset, Optuna's plots."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ...config import Config
from ...errors import DermogazeError
from ...files import write_csv, write_text
from .space import one_line
from .storage import display_url, open_storage, require_optuna

if TYPE_CHECKING:
    import optuna


def show_sweep(study: str, storage: str, out: str | Path) -> dict[str, Any]:
    """The trials table (``trials.csv``, ``trials.md``), the best configuration as a preset (``best.yaml``) and
    Optuna's parameter-importance and optimisation-history plots (``importance.png``, ``history.png``).

    Returns:
        ``table`` (the trials table as aligned text), ``files`` (name → path; a plot that needs more
        complete trials is left out and named in ``notes``), ``notes``.

    Raises:
        DermogazeError: no such study in ``storage``.
    """
    optuna = require_optuna()
    import optuna.visualization.matplotlib as ovm

    from ...evaluation.plots import save_figure

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
            notes.append(f"no history.png: {one_line(exc)}")
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
            t.number, state, _short(t.value), t.user_attrs.get("epochs"), t.user_attrs.get("best_epoch"), seconds,
            *(_short(t.params.get(k)) for k in keys), t.system_attrs.get("failed_trial"), t.user_attrs.get("run"),
            t.user_attrs.get("error"),
        ])
    return header, [["" if v is None else v for v in row] for row in rows]


def _short(v: Any) -> Any:
    """A float to four significant digits (learning rates such as ``0.00035`` keep their digits); other values
    as they are (the CSV keeps integers, text and empty cells)."""
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

