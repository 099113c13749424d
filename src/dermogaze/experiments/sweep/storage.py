"""Where a sweep's trials are recorded: Optuna's relational storage, the study, and the output folder it owns.

Any number of ``dermogaze sweep`` processes, on one machine or many, share one study through the
storage (SQLite, PostgreSQL, MySQL).

- **Kill safety**: the storage's heartbeat (every ``heartbeat`` seconds, stale after twice that)
  marks a trial whose process died as failed, and Optuna's
  :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` queues it once more with the same
  values (:func:`open_storage`, :func:`retry_once`).
- **A study is for one search**: it records its search space, objective, base configuration and
  heartbeat (:func:`study_record`); a process that joins it with other ones is refused
  (:func:`open_study`).
- **Run folders**: ``OUT/trial_NNNN`` by trial number (:func:`trial_folder`; a retry has a new
  number, hence a new folder); a folder that exists is never reused. ``OUT/sweep.json`` names the
  study that owns ``OUT``; another study's folder is refused (:func:`check_owner`, :func:`claim_out`).
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import Config
from ...errors import DermogazeError
from ...files import write_json
from .space import Param, one_line

if TYPE_CHECKING:
    import optuna


def require_optuna() -> Any:
    """The ``optuna`` module (an optional dependency: the ``sweep`` extra)."""
    try:
        import optuna
    except ImportError:
        raise DermogazeError("dermogaze sweep needs Optuna: pip install 'dermogaze[sweep]'") from None
    return optuna


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
            heartbeat_stale_trial_callback=retry_once(),
        )
    try:
        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(engine_url, **kwargs)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
                if attempt == 4 or not created_meanwhile(exc):
                    raise
                time.sleep(0.5 + attempt)
        raise AssertionError("unreachable")
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ValueError) as exc:
        raise DermogazeError(
            f"--storage {display_url(url)}: not a usable database URL ({one_line(exc)}); e.g. "
            "sqlite:///runs/sweeps.db or postgresql://USER:PASSWORD@HOST:5432/DB"
        ) from None
    except ImportError as exc:
        raise DermogazeError(
            f"--storage {display_url(url)}: the database driver is missing ({one_line(exc.__cause__ or exc)}); "
            "install it: pip install 'dermogaze[sweep]' for postgresql://, pymysql for mysql+pymysql://"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise DermogazeError(f"--storage {display_url(url)}: cannot open the database ({one_line(exc)})") from None


#: PostgreSQL's codes for "already exists" (duplicate_object: an enum type, duplicate_table, unique_violation).
_DUPLICATE_CODES = {"42710", "42P07", "23505"}


def created_meanwhile(exc: Exception) -> bool:
    """Whether a failure to create Optuna's tables means another process created them at the same instant.

    Two sweep processes started together on a new database both create the schema: one of them meets the other's
    table, enum type or version row (a unique violation, or in PostgreSQL ``type "studydirection" already exists``).
    Opening again then finds the schema made.
    """
    import sqlalchemy.exc

    code = getattr(getattr(exc, "orig", None), "pgcode", None)
    return isinstance(exc, sqlalchemy.exc.IntegrityError) or code in _DUPLICATE_CODES or "already exists" in str(exc)


def retry_once() -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Optuna's callback that queues a failed trial again with the same values, once."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)


def study_record(params: Sequence[Param], objective: str, base: Config, heartbeat: int) -> dict[str, Any]:
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


def open_study(
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


def check_owner(out: Path, name: str, url: str) -> dict[str, str]:
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


def claim_out(out: Path, study: optuna.Study, url: str) -> None:
    """Make ``OUT`` this study's folder (``sweep.json``); refuse one holding trial folders the study does not know."""
    record = check_owner(out, study.study_name, url)
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
