"""checkpoints: a damaged or edited checkpoint must be refused when it is loaded, by every command that reads one.

Each case writes a copy of the shared run's checkpoint with one field wrong (a calibration that cannot calibrate,
structures or weights that do not fit the network, a normalisation that divides by zero, an input size the network
was not built for, progress counters of the wrong type, resume state that cannot be restored, a malformed record of
the training data or out-of-distribution score) or a file that is not a checkpoint at all, and gives it to one
reader: ``evaluate``, ``explain``, ``predict``, ``export``, ``serve`` or ``train --resume``. Clean: one
``dermogaze: error:`` line that names the file and, for a field, the field; nothing written (no metrics, records,
CSV or ONNX file; a resumed run's files unchanged).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from .cli_probe import ERROR_LINE, Probe, both, check, sha, success, torch_load, user_error

Edit = Callable[[dict], Any]


def _set(*keys: str, value: Any) -> Edit:
    """Set ``ckpt[k1][k2]... = value``."""

    def edit(ckpt: dict) -> None:
        target = ckpt
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


def _delete(*keys: str) -> Edit:
    def edit(ckpt: dict) -> None:
        target = ckpt
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return edit


def _with(field: str, change: Callable[[Any], Any]) -> Edit:
    """``ckpt[field] = change(ckpt[field])``."""
    return lambda ckpt: ckpt.__setitem__(field, change(ckpt[field]))


def _float_weight(ckpt: dict, k: int = 0) -> str:
    return [name for name, t in ckpt["model"].items() if t.is_floating_point() and t.dim() > 1][k]


def _reshape_weight(ckpt: dict) -> None:
    name = _float_weight(ckpt, 1)
    ckpt["model"][name] = torch.zeros(ckpt["model"][name].shape[0] + 1, *ckpt["model"][name].shape[1:])


def _first_moment(ckpt: dict) -> None:
    moments = next(iter(ckpt["optimizer"]["state"].values()))
    moments["exp_avg"] = torch.zeros(3)


def _short_torch_rng(ckpt: dict) -> None:
    ckpt["rng"][0]["torch"] = ckpt["rng"][0]["torch"][:16]


#: case id -> (reader, edit of the checkpoint dict, a word the message must hold: the field).
FIELDS: dict[str, tuple[str, Edit, str]] = {
    # calibration: P(melanoma) = sigmoid(logit / temperature) compared with the threshold
    "ck-temperature-zero-evaluate": ("evaluate", _set("calibration", "temperature", value=0.0), "temperature"),
    "ck-temperature-negative-explain": ("explain", _set("calibration", "temperature", value=-1.0), "temperature"),
    "ck-temperature-inf-predict": ("predict", _set("calibration", "temperature", value=math.inf), "temperature"),
    "ck-temperature-text-export": ("export", _set("calibration", "temperature", value="1.0"), "temperature"),
    "ck-temperature-missing-serve": ("serve", _delete("calibration", "temperature"), "temperature"),
    "ck-threshold-above-1-evaluate": ("evaluate", _set("calibration", "threshold", value=1.5), "threshold"),
    "ck-threshold-negative-predict": ("predict", _set("calibration", "threshold", value=-0.1), "threshold"),
    "ck-threshold-nan-explain": ("explain", _set("calibration", "threshold", value=math.nan), "threshold"),
    "ck-threshold-rule-bogus-export": ("export", _set("calibration", "threshold_rule", value="bogus"),
                                       "threshold_rule"),
    "ck-calibration-list-evaluate": ("evaluate", _set("calibration", value=[1.0, 0.5]), "calibration"),
    # structures: one name per class of the structure classifier, in its order
    "ck-structures-extra-explain": ("explain", _with("structures", lambda s: [*s, "globules"]), "structures"),
    "ck-structures-short-export": ("export", _with("structures", lambda s: s[:-1]), "structures"),
    "ck-structures-duplicate-explain": ("explain", _with("structures", lambda s: [*s[:-1], s[2]]), "structures"),
    "ck-structures-text-predict": ("predict", _with("structures", lambda s: ",".join(s)), "structures"),
    "ck-structures-number-evaluate": ("evaluate", _with("structures", lambda s: [*s[:-1], 7]), "structures"),
    # normalisation: inputs are (x - mean) / std per channel
    "ck-mean-two-channels-explain": ("explain", _with("mean", lambda m: m[:2]), "mean"),
    "ck-std-zero-explain": ("explain", _set("std", value=[0.0, 0.0, 0.0]), "std"),
    "ck-std-negative-evaluate": ("evaluate", _with("std", lambda s: [-s[0], *s[1:]]), "std"),
    "ck-mean-nan-export": ("export", _with("mean", lambda m: [m[0], math.nan, m[2]]), "mean"),
    "ck-std-text-predict": ("predict", _set("std", value="0.2"), "std"),
    # the input size the network was built for
    "ck-image-size-33-explain": ("explain", _set("image_size", value=33), "image_size"),
    "ck-image-size-0-evaluate": ("evaluate", _set("image_size", value=0), "image_size"),
    "ck-image-size-64-explain": ("explain", _set("image_size", value=64), "image_size"),
    "ck-image-size-text-export": ("export", _set("image_size", value="32"), "image_size"),
    "ck-image-size-bool-predict": ("predict", _set("image_size", value=True), "image_size"),
    "ck-cache-size-below-input-evaluate": ("evaluate", _set("cache_size", value=8), "cache_size"),
    # the network: variant, build arguments, weights
    "ck-weights-missing-explain": ("explain", lambda c: c["model"].pop(_float_weight(c)), "weights"),
    "ck-weights-extra-evaluate": ("evaluate", lambda c: c["model"].update({"extra.weight": torch.zeros(2)}),
                                  "weights"),
    "ck-weights-shape-predict": ("predict", _reshape_weight, "weights"),
    "ck-weights-not-tensor-export": ("export", lambda c: c["model"].update({_float_weight(c): [0.0, 1.0]}),
                                     "weights"),
    "ck-model-list-explain": ("explain", _set("model", value=[]), "model"),
    "ck-variant-unknown-evaluate": ("evaluate", _set("variant", value="resnet50"), "variant"),
    "ck-model-kwargs-unknown-explain": ("explain", _set("model_kwargs", "depth", value=3), "model_kwargs"),
    "ck-model-kwargs-steps-text-serve": ("serve", _set("model_kwargs", "steps", value="2"), "model_kwargs"),
    # format, configuration and progress fields
    "ck-config-out-of-range-export": ("export", _set("config", "train", "epochs", value=-1), "train.epochs"),
    "ck-config-text-predict": ("predict", _set("config", value="deco_gap_3"), "config"),
    "ck-format-version-text-evaluate": ("evaluate", _set("format_version", value="2"), "format_version"),
    "ck-format-version-0-explain": ("explain", _set("format_version", value=0), "format_version"),
    "ck-version-number-explain": ("explain", _set("version", value=3), "version"),
    "ck-metrics-list-evaluate": ("evaluate", _set("metrics", value=[]), "metrics"),
    "ck-epoch-text-evaluate": ("evaluate", _set("epoch", value="1"), "epoch"),
    "ck-epoch-negative-resume": ("resume", _set("epoch", value=-3), "epoch"),
    "ck-best-epoch-after-epoch-resume": ("resume", _set("best_epoch", value=5), "best_epoch"),
    "ck-best-val-loss-text-resume": ("resume", _set("best_val_loss", value="low"), "best_val_loss"),
    # what the model was trained on, and its out-of-distribution score
    "ck-training-data-kind-explain": ("explain", _set("training_data", "kind", value="photo"), "training_data"),
    "ck-training-data-text-predict": ("predict", _set("training_data", value="isic2017"), "training_data"),
    "ck-ood-covariance-negative-serve": ("serve", _with("ood", lambda o: {**o, "covariance": -o["covariance"]}),
                                         "ood"),
    "ck-ood-threshold-text-evaluate": ("evaluate", _set("ood", "threshold", value="high"), "ood"),
    # what resuming restores
    "ck-rng-empty-resume": ("resume", _set("rng", value=[]), "rng"),
    "ck-rng-torch-state-short-resume": ("resume", _short_torch_rng, "rng"),
    "ck-optimizer-empty-resume": ("resume", _set("optimizer", value={}), "optimizer"),
    "ck-optimizer-moment-shape-resume": ("resume", _first_moment, "optimizer"),
    "ck-scaler-bogus-resume": ("resume", _set("scaler", value={"scale": "x"}), "scaler"),
    "ck-config-model-variant-resume": ("resume", _set("config", "model", "name", value="vgg_gap"), "config.model"),
    "ck-config-model-width-resume": ("resume", _set("config", "model", "width", value=0.5), "config.model"),
}


def _whole_file(write: Callable[[Path], Any]) -> Callable[[Probe, Path], Any]:
    return lambda probe, path: write(path)


def _prefix(probe: Probe, path: Path, n: int = 100) -> None:
    path.write_bytes(probe.best.read_bytes()[:n])


#: case id -> (reader, how the file is written): files that are not a checkpoint at all.
NOT_CHECKPOINTS: dict[str, tuple[str, Callable[[Probe, Path], Any]]] = {
    "ck-pickle-list-evaluate": ("evaluate", _whole_file(lambda p: torch.save([1, 2, 3], p))),
    "ck-pickle-tensor-export": ("export", _whole_file(lambda p: torch.save(torch.zeros(3), p))),
    "ck-pickle-string-resume": ("resume", _whole_file(lambda p: torch.save("dermogaze-checkpoint", p))),
    "ck-first-100-bytes-predict": ("predict", _prefix),
    "ck-zeroed-export": ("export", lambda probe, p: p.write_bytes(bytes(probe.best.stat().st_size))),
    "ck-random-bytes-resume": ("resume", _whole_file(lambda p: p.write_bytes(random.Random(3).randbytes(40_000)))),
}


def _written(command: str, out: Path) -> list[str]:
    """What the reader wrote although it should have refused the checkpoint."""
    if command == "resume":
        return []
    if not out.exists():
        return []
    return sorted(p.name for p in out.rglob("*") if p.is_file())


def _refused(probe: Probe, command: str, ckpt: Path, out: Path, field: str | None) -> None:
    """Run ``command`` on ``ckpt``: refused in one line naming the file (and ``field``), nothing written."""
    run_files = {}
    args = probe.reader_args(command, ckpt, out)
    if command == "resume":
        ckpt = out / "last.pt"
        run_files = {name: sha(out / name) for name in ("last.pt", "best.pt", "metrics.jsonl")}
    proc = probe.run(args)
    line = next((ln for ln in proc.err.splitlines() if ERROR_LINE.match(ln)), "")
    changed = [name for name, digest in run_files.items() if sha(out / name) != digest]
    written = _written(command, out)
    check(both(user_error(proc),
               (ckpt.name in line, f"the message does not name the checkpoint {ckpt.name}"),
               (field is None or field in line, f"the message does not name the field {field!r}"),
               (not written, f"wrote {', '.join(written)} from a refused checkpoint"),
               (not changed, f"the run's {', '.join(changed)} changed")), probe)


@pytest.mark.parametrize(("command", "edit", "field"), [pytest.param(*v, id=k) for k, v in FIELDS.items()])
def test_a_checkpoint_with_a_bad_field_is_refused_by_its_reader(probe: Probe, tmp_path, command, edit, field):
    """A copy of the run's ``best.pt`` (``last.pt`` for ``train --resume``) with one field wrong, given to one
    reader: refused in one line naming the file and the field, before anything is written."""
    source = probe.last if command == "resume" else probe.best
    ckpt = torch_load(source)
    edit(ckpt)
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    _refused(probe, command, path, tmp_path / "out", field)


@pytest.mark.parametrize(("command", "write"), [pytest.param(*v, id=k) for k, v in NOT_CHECKPOINTS.items()])
def test_a_file_that_is_not_a_checkpoint_is_refused(probe: Probe, tmp_path, command, write):
    """A pickle of a list, a tensor or a string, a file cut after 100 bytes, zeroed or of random bytes, as a
    checkpoint: refused in one line naming the file, nothing written."""
    path = tmp_path / "model.pt"
    write(probe, path)
    _refused(probe, command, path, tmp_path / "out", None)


READERS = ["evaluate", "explain", "predict", "export", "resume"]


@pytest.mark.parametrize("command", [pytest.param(c, id=f"ck-control-{c}") for c in READERS])
def test_the_unedited_checkpoint_is_read_by_every_reader(probe: Probe, tmp_path, command):
    """The control of the cases above: the run's own checkpoint, saved again unchanged, is accepted by each reader
    (so that a refusal above is the edit's, not the reader's)."""
    path = tmp_path / "same.pt"
    torch.save(torch_load(probe.last if command == "resume" else probe.best), path)
    check(success(probe.run(probe.reader_args(command, path, tmp_path / "out"))), probe)
