"""data-loss: a fault or a mistake must not destroy or corrupt what is on disk."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from .cli_probe import (
    Probe,
    Verdict,
    both,
    check,
    first_id,
    run_invariants,
    save_image,
    sha,
    split_folder,
    success,
    user_error,
    wait_for,
)


# ----------------------------------------------------------------------------------------------
# SIGKILL at an epoch-end write boundary, then --resume
# ----------------------------------------------------------------------------------------------
def _stat(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


#: case id -> (the write after which the kill lands, a delay after it drawn from [0, 60 ms]).
KILLS = {
    "dl-kill-e1-last": ("e1-last", False),
    "dl-kill-e2-metrics": ("e2-metrics", False),
    "dl-kill-e2-last": ("e2-last", False),
    "dl-kill-e2-random": ("e2-metrics", True),
}


@pytest.mark.slow
@pytest.mark.parametrize(("point", "delayed"), [pytest.param(*v, id=k) for k, v in KILLS.items()])
def test_a_kill_at_an_epoch_end_write_then_resume_leaves_a_consistent_run(probe: Probe, tmp_path, point, delayed):
    """SIGKILL right after epoch 1's last.pt appears, after epoch 2's metrics.jsonl write, after epoch 2's last.pt
    write (before best.pt), or a seeded 0-60 ms after epoch 2's metrics.jsonl write; then ``train --resume``:
    metrics.jsonl holds one row per epoch, last.pt the last epoch, best.pt the best one.

    The run has 3 epochs, so the process is still running at every kill point (it is killed on the file event,
    whatever the machine's speed; only where the delayed kill lands depends on it, and every landing must be
    recoverable)."""
    epochs = 3
    run = tmp_path / "run"
    metrics, last = run / "metrics.jsonl", run / "last.pt"
    delay = random.Random(point).uniform(0.0, 0.06) if delayed else 0.0
    popen = probe.spawn(probe.train_args(run, epochs=epochs, batches=None))
    trigger, base_m, base_l = None, None, None
    while popen.poll() is None:
        sm, sl = _stat(metrics), _stat(last)
        if point == "e1-last":
            if sl is not None:
                trigger = "epoch-1 last.pt written"
        elif sl is not None:
            if base_m is None:
                base_m, base_l = sm, sl
            elif point == "e2-metrics" and sm != base_m:
                trigger = "epoch-2 metrics.jsonl written" + (f" + {delay * 1000:.0f} ms" if delay else "")
            elif point == "e2-last" and sl != base_l:
                trigger = "epoch-2 last.pt written"
        if trigger:
            time.sleep(delay)  # the seeded landing point after the event, not a synchronisation
            probe.kill(popen)
            break
        time.sleep(0.0005)
    killed = probe.wait(popen)
    assert trigger, f"the training ended (rc={killed.rc}) before the kill point:\n{killed.err[-2000:]}"
    state = f"killed at {trigger} (files: {', '.join(sorted(f.name for f in run.iterdir()))})"
    resumed = success(probe.run(["train", "--resume", run]), "--resume after a kill")
    verdict = Verdict(resumed.clean, f"{state}; resume {resumed.outcome}", resumed.reason)
    check(both(verdict, *[(False, msg) for msg in run_invariants(run, epochs)]), probe)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["dl-concurrent-train"])
def test_a_second_train_into_a_busy_folder_is_refused(probe: Probe, tmp_path, case):
    """Two ``train`` into one ``--out``, the second started once the first holds the folder (its ``.lock``): one
    fails cleanly, the other finishes a consistent run."""
    run = tmp_path / "run"
    args = probe.train_args(run, epochs=2, batches=None)
    first = probe.spawn(args)
    wait_for(run / ".lock", first)
    second = probe.spawn(args)
    a, b = probe.wait(first), probe.wait(second)
    problems = run_invariants(run, 2)
    ok = [x for x in (a, b) if x.rc == 0]
    if len(ok) == 2:
        verdict = Verdict(False, "both rc=0: two trainings wrote one run folder" + (f"; {problems[0]}" if problems
                                                                                     else ""),
                          "a second train on a busy run folder is not refused")
    elif not ok:
        verdict = Verdict(False, f"first {success(a).outcome}; second {success(b).outcome}",
                          "neither training finished")
    else:
        loser = b if ok[0] is a else a
        refused = user_error(loser)
        order = "second refused" if loser is b else "FIRST refused, second won"
        verdict = both(Verdict(refused.clean, f"{order}: {refused.outcome}", refused.reason),
                       *[(False, msg) for msg in problems])
    check(verdict, probe)


# ----------------------------------------------------------------------------------------------
# A fresh train over an earlier run's files
# ----------------------------------------------------------------------------------------------
FRESH_OVER = {
    "dl-fresh-over-best-metrics": ["best.pt", "metrics.jsonl"],
    "dl-fresh-over-best-only": ["best.pt"],
    "dl-fresh-over-full-run": ["last.pt", "best.pt", "metrics.jsonl", "config.yaml"],
}


@pytest.mark.parametrize("keep", [pytest.param(v, id=k) for k, v in FRESH_OVER.items()])
def test_a_fresh_train_over_a_runs_files_is_refused_and_keeps_them(probe: Probe, tmp_path, keep):
    """A fresh ``train --out`` into a folder holding these files of an earlier run: refused, the files kept."""
    run = tmp_path / "run"
    run.mkdir()
    for name in keep:
        shutil.copy(probe.run_dir / name, run / name)
    before = {name: sha(run / name) for name in keep}
    verdict = user_error(probe.run(probe.train_args(run)))
    lost = [name for name in keep if sha(run / name) != before[name]]
    check(both(verdict, (not lost, f"{', '.join(lost)} deleted or replaced")), probe)


# ----------------------------------------------------------------------------------------------
# A failed re-prepare over a good cache
# ----------------------------------------------------------------------------------------------
def _corrupt_image(col: Path) -> None:
    (split_folder(col, "Training", "Data") / f"{first_id(col, 'Training', 2)}.jpg").write_bytes(b"\xff\xd8garbage")


def _unreadable_features(col: Path) -> None:
    path = split_folder(col, "Validation", "Part2_GroundTruth") / f"{first_id(col, 'Validation')}_features.json"
    path.write_text('{"pigment_network": [0, ')


SPOILS: dict[str, Callable[[Path], None]] = {
    "dl-reprepare-bad-image": _corrupt_image,
    "dl-reprepare-bad-features": _unreadable_features,
}


@pytest.mark.parametrize("spoil", [pytest.param(v, id=k) for k, v in SPOILS.items()])
def test_a_failed_prepare_force_keeps_the_old_cache(probe: Probe, tmp_path, spoil):
    """``data prepare --force`` into a good cache from a collection with a corrupt image or unreadable Part 2 JSON:
    fails cleanly, and the old cache still loads (``data stats``)."""
    col = probe.copy_collection(tmp_path / "collection")
    cache = probe.copy_cache(tmp_path / "cache")
    spoil(col)
    verdict = user_error(probe.run(["data", "prepare", "--isic", col, "--out", cache, "--size", 40, "--force"]))
    after = success(probe.run(["data", "stats", cache]))
    check(both(verdict, (after.clean, f"old cache no longer loads (data stats {after.outcome})")), probe)


# ----------------------------------------------------------------------------------------------
# Two images whose names map to one output record
# ----------------------------------------------------------------------------------------------
COLLISIONS = {
    "dl-explain-collision-space": ["a b.jpg", "a_b.png"],
    "dl-explain-collision-suffix": ["x.jpg", "x.png", "x_2.jpg"],
}


@pytest.mark.parametrize("names", [pytest.param(v, id=k) for k, v in COLLISIONS.items()])
def test_explain_writes_one_record_per_image_whatever_their_names(probe: Probe, tmp_path, names: Sequence[str]):
    """``explain`` of different images whose names differ only by suffix or by ' ' vs '_': one record each."""
    sources = [probe.img, probe.img2, probe.img]
    inputs = [save_image(sources[k], tmp_path / name, mirrored=k == 2) for k, name in enumerate(names)]
    out = tmp_path / "out"
    verdict = success(probe.run(probe.explain_args(inputs, out)))
    records = [json.loads(f.read_text()) for f in sorted(out.glob("*.json"))] if out.is_dir() else []
    paths = {str(r.get("image_path")) for r in records}
    check(both(verdict, (len(records) == len(names) and len(paths) == len(names),
                         f"{len(records)} JSON record(s) for {len(names)} different images")), probe)
