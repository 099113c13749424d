"""``dermogaze sweep``: search spaces, trials, pruning, kill and resume, two processes on PostgreSQL, ``sweep show``.

Trials train ``configs/tiny.yaml`` on the session's tiny synthetic cache (a second or two each). The
expected trial values are recomputed from each trial's own ``metrics.jsonl`` (the kept epoch is the
one of lowest validation loss, as ``best.pt``); the sweep bookkeeping is read back from Optuna's
storage.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from PIL import Image

from dermogaze.cli import main
from dermogaze.config import load_config
from dermogaze.errors import DermogazeError
from dermogaze.experiments.sweep import load_space, objective_value, open_storage, parse_objective, run_sweep
from dermogaze.files import read_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")

#: The tests' search space: a log-uniform learning rate and a categorical balancing.
SPACE = {"train.lr_attention": {"log": [1.0e-4, 1.0e-2]}, "loss.balancing": {"categorical": ["none", "batch"]}}
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
#: Child processes: one thread each, so that two sweeps and the test share the cores sensibly.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture
def space(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    return path


def _base(cache: Path, *extra: str):
    return load_config("tiny", [f"data.cache={cache}", "train.max_train_batches=2", *extra])


def _study(name: str, url: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def _kept_row(run: Path) -> dict:
    """The row of ``best.pt``: the first epoch of lowest validation loss."""
    rows = read_jsonl(run / "metrics.jsonl")
    return min(rows, key=lambda r: (r["val_loss"], r["epoch"]))


def _sweep_cli(cache: Path, space: Path, url: str, out: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dermogaze", "sweep", "--preset", "tiny", "--data", str(cache), "--space",
            str(space), "--study", "s", "--storage", url, "--trials", str(trials), "--out", str(out),
            "--no-progress", *extra]


# --------------------------------------------------------------------------------------------
# Search space and objective
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"train.lr_nothing": {"log": [1e-4, 1e-2]}}, "unknown key train.lr_nothing"),
        ({"optim.lr": {"log": [1e-4, 1e-2]}}, "unknown section 'optim'"),
        ({"lr_attention": {"log": [1e-4, 1e-2]}}, "must be section.key"),
        ({"train.lr_attention": {"log": [1e-2, 1e-4]}}, "train.lr_attention: empty range [0.01, 0.0001]"),
        ({"model.steps": {"int": [3, 3]}}, "model.steps: empty range [3, 3]"),
        ({"loss.balancing": {"categorical": []}}, "loss.balancing: empty categorical range"),
        ({"model.steps": {"float": [1.0, 4.0]}}, "model.steps is an integer, so a float range does not fit it"),
        ({"loss.balancing": {"log": [0.1, 1.0]}}, "loss.balancing is not a number, so a log range does not fit"),
        ({"train.lr_branches": {"int": [1, 3]}}, "train.lr_branches is a number, so an int range does not fit"),
        ({"train.lr_branches": {"float": ["a", 1.0]}}, "a float range is [LOW, HIGH] of two numbers"),
        ({"train.lr_branches": {"log": [0.0, 1.0]}}, "a log range must be above 0"),
        ({"train.lr_branches": {"float": [-1.0, 1.0]}}, "train.lr_branches must be a number >= 0, got -1.0"),
        ({"loss.balancing": {"categorical": ["batch", "nope"]}}, "loss.balancing must be one of"),
        ({"model.skip": {"categorical": [True, "maybe"]}}, "model.skip must be true or false"),
        ({"train.betas": {"categorical": [[0.9, 0.99]]}}, "categorical choices are numbers, text, true/false"),
        ({"train.lr_branches": [1e-4, 1e-2]}, "train.lr_branches must be one of {float: [LOW, HIGH]}"),
        ({"train.lr_branches": {"uniform": [0, 1]}}, "train.lr_branches must be one of {float: [LOW, HIGH]}"),
    ],
)
def test_search_space_errors_are_one_line(capsys, pipeline_cache, tmp_path, entry, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(entry))
    db = tmp_path / "db.sqlite"
    rc = main(["sweep", "--preset", "tiny", "--data", str(pipeline_cache), "--space", str(bad), "--study", "s",
               "--storage", f"sqlite:///{db}", "--trials", "2", "--out", str(tmp_path / "out"), "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("dermogaze: error: ") and str(bad) in err[0], err
    assert expected in err[0], err[0]
    assert not db.exists() and not (tmp_path / "out").exists()  # refused before any work


def test_shipped_space_loads_by_name_and_by_package_path():
    base = load_config("demo")
    by_name = load_space("demo", base)
    assert by_name == load_space("configs/sweeps/demo.yaml", base)
    keys = [p.key for p in by_name]
    assert {"train.lr_encoder", "train.lr_attention", "train.lr_branches", "model.steps", "loss.balancing",
            "loss.attention"} <= set(keys)
    steps = next(p for p in by_name if p.key == "model.steps")
    assert steps.kind == "int" and steps.values[0] < steps.values[1]
    with pytest.raises(DermogazeError, match="no such file nor shipped space"):
        load_space("nothing_here", base)


class _Duplicate(Exception):
    pgcode = "42710"  # PostgreSQL's duplicate_object, as psycopg2 reports it


@pytest.mark.parametrize("error", ["programming", "integrity"])
def test_a_schema_created_meanwhile_by_another_process_is_opened_again(tmp_path, monkeypatch, error):
    """Two sweeps started at once on a new PostgreSQL database: one meets the other's enum type (or version row)
    while creating the schema; it opens the storage again instead of failing."""
    import optuna
    import sqlalchemy.exc

    from dermogaze.experiments.sweep import storage

    made = {"calls": 0}
    real = optuna.storages.RDBStorage

    def racing(url, **kwargs):
        made["calls"] += 1
        if made["calls"] == 1:
            if error == "programming":
                raise sqlalchemy.exc.ProgrammingError("CREATE TYPE studydirection", {}, _Duplicate('type "x" exists'))
            raise sqlalchemy.exc.IntegrityError("INSERT INTO version_info", {}, Exception("duplicate key"))
        return real(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    opened = open_storage(f"sqlite:///{tmp_path / 'sweeps.db'}")
    assert made["calls"] == 2 and isinstance(opened, real)


def test_other_database_errors_are_not_retried(tmp_path, monkeypatch):
    import optuna
    import sqlalchemy.exc

    calls = []

    def broken(url, **kwargs):
        calls.append(url)
        raise sqlalchemy.exc.ProgrammingError("SELECT", {}, Exception("permission denied for schema public"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    with pytest.raises(DermogazeError, match="cannot open the database .*permission denied"):
        open_storage(f"sqlite:///{tmp_path / 'sweeps.db'}")
    assert len(calls) == 1


def test_objective_parsing_and_value():
    assert parse_objective("val_auc") == {"val_auc": 1.0}
    assert parse_objective("0.7*val_auc + 0.3*val_map") == {"val_auc": 0.7, "val_map": 0.3}
    row = {"epoch": 2, "val_auc": 0.8, "val_map": 0.25, "val_ap": 0.5}
    assert objective_value({"val_auc": 0.7, "val_map": 0.3}, row) == pytest.approx(0.7 * 0.8 + 0.3 * 0.25)
    for bad in ("val_loss", "-1*val_auc", "val_auc+val_auc", "0.5*", "2*val_auc*val_map", ""):
        with pytest.raises(DermogazeError, match="--objective"):
            parse_objective(bad)
    with pytest.raises(DermogazeError, match="the objective needs val_map"):
        objective_value({"val_map": 1.0}, {"epoch": 1, "val_auc": 0.5})


# --------------------------------------------------------------------------------------------
# Training's per-epoch callback
# --------------------------------------------------------------------------------------------
def test_train_on_epoch_sees_every_row_and_can_stop_the_run(pipeline_cache, tmp_path):
    from dermogaze.training import train

    class Stop(Exception):
        pass

    seen = []

    def stop_after_first(epoch, row):
        seen.append((epoch, dict(row)))
        raise Stop

    cfg = _base(pipeline_cache, "train.epochs=3")
    with pytest.raises(Stop):
        train(cfg, tmp_path / "stopped", progress=False, on_epoch=stop_after_first)
    rows = read_jsonl(tmp_path / "stopped" / "metrics.jsonl")
    assert [e for e, _ in seen] == [1] and [r["epoch"] for r in rows] == [1]
    assert seen[0][1] == rows[0]  # the row handed over is the one written
    assert (tmp_path / "stopped" / "last.pt").is_file() and not (tmp_path / "stopped" / ".lock").exists()

    seen.clear()
    train(cfg, tmp_path / "full", progress=False, on_epoch=lambda e, r: seen.append((e, dict(r))))
    assert seen == [(r["epoch"], r) for r in read_jsonl(tmp_path / "full" / "metrics.jsonl")]
    assert len(seen) == 3


# --------------------------------------------------------------------------------------------
# A sweep in SQLite, pruning, sweep show
# --------------------------------------------------------------------------------------------
@pytest.mark.slow  # three trainings
def test_sweep_of_three_trials_then_show(capsys, pipeline_cache, space, tmp_path):
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    out = tmp_path / "runs"
    objective = "0.7*val_auc+0.3*val_map"
    result = run_sweep(_base(pipeline_cache), space, study="s", storage=url, trials=3, out=out,
                       objective=objective, seed=1, progress=False)
    assert result["ran"] == [0, 1, 2] and result["finished"] == 3
    st = _study("s", url)
    assert [t.state for t in st.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert sorted(p.name for p in out.glob("trial_*")) == ["trial_0000", "trial_0001", "trial_0002"]
    for t in st.trials:
        run = out / f"trial_{t.number:04d}"
        assert t.user_attrs["run"] == str(run)
        assert 1e-4 <= t.params["train.lr_attention"] <= 1e-2 and t.params["loss.balancing"] in ("none", "batch")
        trained = load_config(run / "config.yaml")  # what the trial really trained
        assert trained.train.lr_attention == t.params["train.lr_attention"]
        assert trained.loss.balancing == t.params["loss.balancing"]
        assert trained.train.lr_branches == 1e-3 and trained.model.steps == 2  # the rest: the base configuration
        kept = _kept_row(run)
        assert t.user_attrs["best_epoch"] == kept["epoch"]
        assert t.value == pytest.approx(0.7 * kept["val_auc"] + 0.3 * kept["val_map"], abs=1e-12)
    assert len({tuple(sorted(t.params.items())) for t in st.trials}) == 3
    assert result["best"]["number"] == max(st.trials, key=lambda t: t.value).number

    # The study exists: a fresh start is refused, --resume with the budget met runs nothing, a larger budget runs more.
    with pytest.raises(DermogazeError, match="already exists.*--resume"):
        run_sweep(_base(pipeline_cache), space, study="s", storage=url, trials=3, out=out, objective=objective,
                  progress=False)
    with pytest.raises(DermogazeError, match="another objective"):
        run_sweep(_base(pipeline_cache), space, study="s", storage=url, trials=3, out=out, resume=True,
                  progress=False)
    again = run_sweep(_base(pipeline_cache), space, study="s", storage=url, trials=3, out=out, objective=objective,
                      resume=True, progress=False)
    assert again["ran"] == [] and again["finished"] == 3
    with pytest.raises(DermogazeError, match="holds the trials of study 's'"):
        run_sweep(_base(pipeline_cache), space, study="other", storage=url, trials=1, out=out, progress=False)

    # sweep show: the table, the best preset, both plots.
    show = tmp_path / "show"
    assert main(["sweep", "show", "s", "--storage", url, "--out", str(show)]) == 0
    printed = capsys.readouterr().out
    assert "train.lr_attention" in printed and "complete" in printed
    csv_rows = (show / "trials.csv").read_text().splitlines()
    assert len(csv_rows) == 4 and csv_rows[0].startswith("trial,state,value")
    assert f"`{objective}`" in (show / "trials.md").read_text()
    best = max(st.trials, key=lambda t: t.value)
    preset = load_config(show / "best.yaml")  # loads and validates as a preset
    assert preset.train.lr_attention == best.params["train.lr_attention"]
    assert preset.loss.balancing == best.params["loss.balancing"]
    assert preset.model.width == 0.125 and preset.data.cache is None  # the base configuration, without the data
    for png in ("importance.png", "history.png"):
        with Image.open(show / png) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100


def test_a_trial_below_the_median_is_pruned_after_its_first_epoch(pipeline_cache, space, tmp_path):
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    out = tmp_path / "runs"
    base = _base(pipeline_cache, "train.epochs=3")
    run_sweep(base, space, study="p", storage=url, trials=1, out=out, progress=False)
    st = _study("p", url)
    for _ in range(2):  # two finished trials whose every epoch scored 2 (above any AUC)
        st.add_trial(optuna.create_trial(value=2.0, intermediate_values={1: 2.0, 2: 2.0, 3: 2.0}))
    result = run_sweep(base, space, study="p", storage=url, trials=4, out=out, resume=True, prune_startup=1,
                       progress=False)
    pruned = st.trials[3]
    assert result["ran"] == [3] and pruned.state == optuna.trial.TrialState.PRUNED
    assert list(pruned.intermediate_values) == [1]
    assert [r["epoch"] for r in read_jsonl(out / "trial_0003" / "metrics.jsonl")] == [1]


def test_a_trial_beyond_the_budget_is_dropped_before_training(pipeline_cache, space, tmp_path):
    """Two processes asking in the same instant for the last place: the later trial number gives way."""
    from dermogaze.experiments.sweep.run import _objective

    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    out = tmp_path / "runs"
    base = _base(pipeline_cache)
    run_sweep(base, space, study="b", storage=url, trials=1, out=out, progress=False)
    st = _study("b", url)
    st.ask()  # trial 1: the other process's, running
    late = st.ask()  # trial 2: this process's, asked in the same instant
    with pytest.raises(DermogazeError, match="beyond the budget of 2 trials"):
        _objective(late, base=base, params=load_space(space, base), weights=parse_objective("val_auc"), budget=2,
                   out=out, launcher=None, progress=False)
    assert late.user_attrs == {"surplus": True} and late.params == {}
    assert not (out / "trial_0002").exists()


def test_sweep_show_of_a_missing_study(capsys, tmp_path, pipeline_cache, space):
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    assert main(["sweep", "show", "s", "--storage", url, "--out", str(tmp_path / "show")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "sweeps.db").exists()


@pytest.mark.slow
def test_trials_as_torchrun_jobs_report_every_epoch_and_are_pruned(pipeline_cache, space, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    out = tmp_path / "runs"
    launcher = f"{Path(sys.executable).parent / 'torchrun'} --standalone --nproc-per-node 2"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    base = _base(pipeline_cache, "train.epochs=6")
    run_sweep(base, space, study="t", storage=url, trials=1, out=out, launcher=launcher, progress=False)
    st = _study("t", url)
    first, run = st.trials[0], out / "trial_0000"
    assert first.state == optuna.trial.TrialState.COMPLETE
    assert "world size 2" in (run / "train.log").read_text()  # two processes trained it
    assert load_config(run / "trial.yaml").train.lr_attention == first.params["train.lr_attention"]
    rows = read_jsonl(run / "metrics.jsonl")
    assert first.intermediate_values == {r["epoch"]: pytest.approx(r["val_auc"]) for r in rows}
    assert first.value == pytest.approx(_kept_row(run)["val_auc"])

    for _ in range(2):  # two finished trials whose every epoch scored 2: the next is pruned after its first epoch
        st.add_trial(optuna.create_trial(value=2.0, intermediate_values={e: 2.0 for e in range(1, 7)}))
    run_sweep(base, space, study="t", storage=url, trials=4, out=out, launcher=launcher, resume=True,
              prune_startup=1, progress=False)
    pruned = st.trials[3]
    assert pruned.state == optuna.trial.TrialState.PRUNED and list(pruned.intermediate_values) == [1]
    assert len(read_jsonl(out / "trial_0003" / "metrics.jsonl")) < 6  # the child was stopped


# --------------------------------------------------------------------------------------------
# Killed mid-trial, resumed
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_sweep_killed_mid_trial_resumes_and_retries_that_trial_once(pipeline_cache, space, tmp_path):
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    out = tmp_path / "runs"
    command = _sweep_cli(pipeline_cache, space, url, out, 3, "-o", "train.epochs=4", "--heartbeat", "1")
    proc = subprocess.Popen(command, env=CHILD_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not (out / "trial_0001" / ".lock").exists():  # trial 1 is training
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    st = _study("s", url)
    assert [t.state for t in st.trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]
    killed_files = {p.name: p.read_bytes() for p in (out / "trial_0001").iterdir() if p.is_file()}

    resumed = subprocess.run(command + ["--resume"], env=CHILD_ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    trials = _study("s", url).trials
    states = {t.number: t.state for t in trials}
    assert states[1] == optuna.trial.TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retries) == 1 and retries[0].state == optuna.trial.TrialState.COMPLETE
    assert retries[0].params == trials[1].params  # the same values, once more
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == 3
    folders = sorted(p.name for p in out.glob("trial_*"))
    assert folders == [f"trial_{t.number:04d}" for t in trials]  # one folder per trial number, none shared
    assert len({t.user_attrs["run"] for t in finished}) == 3
    for t in finished:
        assert len(read_jsonl(Path(t.user_attrs["run"]) / "metrics.jsonl")) == 4
    # The killed trial's folder was left alone.
    assert {n: b for n, b in killed_files.items() if n != ".lock"} == {
        p.name: p.read_bytes() for p in (out / "trial_0001").iterdir() if p.is_file() and p.name != ".lock"
    }


@pytest.mark.slow
def test_ctrl_c_queues_the_interrupted_trial_again(pipeline_cache, space, tmp_path):
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    out = tmp_path / "runs"
    # 200 epochs of 0.2 s: the trial outlasts the test's reaction on a loaded machine (with 6 the whole sweep could
    # end before the signal). SIGINT's default action whatever the runner's: a runner started in the background by
    # a shell (`make test &`) ignores SIGINT, and a child inherits that.
    proc = subprocess.Popen(_sweep_cli(pipeline_cache, space, url, out, 2, "-o", "train.epochs=200"), env=CHILD_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    while not (out / "trial_0000" / ".lock").exists():
        assert proc.poll() is None
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and stderr.strip().splitlines()[-1] == "dermogaze: interrupted", stderr
    first, again = _study("s", url).trials
    assert first.state == optuna.trial.TrialState.FAIL
    assert again.state == optuna.trial.TrialState.WAITING and again.system_attrs["failed_trial"] == 0
    assert again.params == first.params


# --------------------------------------------------------------------------------------------
# Two processes, one study, a real PostgreSQL server
# --------------------------------------------------------------------------------------------
def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A private PostgreSQL server on loopback (initdb, pg_ctl start, createdb); stopped and removed after.

    Missing server binaries skip the test, or fail it under CI (``CI=1``), where ``.ci/run`` installs them.
    """
    bindir = _postgres_bin()
    if bindir is None or not (bindir / "pg_ctl").is_file():
        reason = "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql"
        if os.environ.get("CI") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="dermogaze-pg-"))  # not under pytest's root-only folders
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()

    def pg(tool: str, *args: str) -> None:
        subprocess.run([*as_user, str(bindir / tool), *args], check=True, capture_output=True, timeout=120)

    try:
        pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        pg("pg_ctl", "-D", str(data), "-l", str(root / "server.log"), "-w", "-o",
           f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "sweeps")
        yield f"postgresql://postgres@127.0.0.1:{port}/sweeps"
    finally:
        if (data / "postmaster.pid").exists():
            pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_processes_share_one_study_in_postgresql(pipeline_cache, space, postgres_url, tmp_path):
    out = tmp_path / "runs"  # one folder for both, as on a shared file system
    trials = 4
    procs = [
        subprocess.Popen(_sweep_cli(pipeline_cache, space, postgres_url, out, trials, "--resume", "--seed", str(i),
                                    "-o", "train.epochs=3"),
                         env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=400) for p in procs]
    for p, (_, stderr) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, stderr
    st = _study("s", postgres_url)
    finished = [t for t in st.trials if t.state in FINISHED]
    assert len(finished) == trials
    extra = [t for t in st.trials if t.state not in FINISHED]
    assert all(t.user_attrs.get("surplus") for t in extra)  # only a same-instant ask may add one, untrained
    ran_here = [int(stdout.split("finished trials (")[1].split(" run here")[0]) for stdout, _ in outputs]
    assert sum(ran_here) == trials, ran_here
    assert sorted(p.name for p in out.glob("trial_*")) == [f"trial_{t.number:04d}" for t in finished]
    for t in finished:
        assert len(read_jsonl(out / f"trial_{t.number:04d}" / "metrics.jsonl")) == 3
    assert len({tuple(sorted(t.params.items())) for t in finished}) == trials
