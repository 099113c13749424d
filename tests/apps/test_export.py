"""``dermogaze export``: the ONNX graph against PyTorch in onnxruntime, every attentive variant, metadata, bad input.

Checkpoints are written here from tiny random models (width 1/8, 32-64 px) with a non-zero ``V_a``
(non-uniform attention), trained-looking batch norms, six structure names that are not ISIC 2017's
and a temperature other than 1, so that each of them is seen to reach the exported file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import randomise_batch_norm
from dermogaze.apps import export as export_module
from dermogaze.cli import main
from dermogaze.data.images import normalise
from dermogaze.models import build_model, list_models
from dermogaze.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = 0.125
STRUCTURES = ["dots", "globules", "network", "lines", "veil", "background"]  # deliberately not ISIC 2017's
MEAN, STD = [0.61, 0.52, 0.47], [0.21, 0.19, 0.24]
CALIBRATION = {"temperature": 1.7, "threshold": 0.37, "threshold_rule": "youden"}
#: onnxruntime vs PyTorch: P(melanoma) as the issue asks; maps in [0, 1] (attention, masks) and logits.
PROB_TOL, MAP_TOL, LOGIT_RTOL = 1e-4, 1e-5, 1e-4
ATTENTIVE = [n for n in list_models() if build_model(n, width=TINY, image_size=32, steps=2).attention is not None]


def write_checkpoint(path, name, *, image_size=32, steps=2, structures=STRUCTURES, seed=0):
    """A complete checkpoint of a tiny random ``name`` model (see the module docstring)."""
    torch.manual_seed(seed)
    model = build_model(name, weights=None, width=TINY, image_size=image_size, steps=steps)
    randomise_batch_norm(model)
    with torch.no_grad():
        if model.attention is not None:
            model.attention.v_a.weight.normal_(0.0, 0.5)
    state = {
        "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION, "version": "test", "config": {},
        "variant": name, "model_kwargs": {k: v for k, v in model.init_kwargs.items() if k != "name"},
        "model": model.state_dict(), "optimizer": {}, "scaler": {}, "epoch": 4, "best_val_loss": 0.5,
        "best_epoch": 4, "metrics": {}, "mean": MEAN, "std": STD, "structures": list(structures),
        "image_size": image_size, "cache_size": image_size + 8, "calibration": dict(CALIBRATION), "rng": [],
    }
    return save_checkpoint(path, state)


def run_cli(capsys, argv):
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def one_error_line(status, err, expected):
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("dermogaze: error: ") and expected in lines[0], lines[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``deco_gap_3`` (T = 3, 64 px) exported by the command line: ``(checkpoint, model.onnx, stdout)``."""
    folder = tmp_path_factory.mktemp("export")
    ckpt = write_checkpoint(folder / "best.pt", "deco_gap_3", image_size=64, steps=3)
    out = folder / "onnx" / "model.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    return ckpt, out


def run_both(ckpt_path, onnx_path, images):
    """The ONNX outputs (onnxruntime) and PyTorch's (the model as loaded) on the same images."""
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images.numpy()}), strict=True))
    with torch.no_grad():
        out = model(images)
    return got, out


@pytest.mark.parametrize("batch", [1, 3])
def test_parity_with_pytorch_at_batch_1_and_3(exported, batch):
    ckpt, path = exported
    images = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
    got, out = run_both(ckpt, path, images)
    # the probability is the calibrated one, sigmoid((l_mel - l_ben) / T), recomputed here from PyTorch's logits
    logits = out.logits.double().numpy()
    prob = 1.0 / (1.0 + np.exp(-(logits[:, 1] - logits[:, 0]) / CALIBRATION["temperature"]))
    assert got["melanoma_probability"].shape == (batch,)
    assert np.abs(got["melanoma_probability"] - prob).max() <= PROB_TOL
    np.testing.assert_allclose(got["logits"], out.logits.numpy(), rtol=LOGIT_RTOL, atol=LOGIT_RTOL)
    assert got["attention"].shape == (batch, 3, 8, 8)
    assert np.abs(got["attention"] - out.attention.numpy()).max() <= MAP_TOL
    np.testing.assert_allclose(got["attention"].sum(axis=(2, 3)), 1.0, atol=1e-5)  # Eq. 2: each map sums to one
    assert got["masks"].shape == (batch, 3, 64, 64)
    assert np.abs(got["masks"] - out.masks.numpy()).max() <= MAP_TOL
    assert got["structure_logits"].shape == (batch, 3, len(STRUCTURES))
    np.testing.assert_allclose(got["structure_logits"], out.structure_logits.numpy(), rtol=LOGIT_RTOL, atol=1e-6)
    assert out.attention.std() > 0  # non-uniform attention (V_a != 0): the maps are really compared


def test_parity_on_an_image_normalised_with_the_metadata(exported):
    """A deployment reads mean/std from the file: the same input as PyTorch's pipeline, the same probability."""
    ckpt, path = exported
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    by_hand = ((image.astype(np.float32) / 255.0 - meta["mean"]) / meta["std"]).transpose(2, 0, 1)[None]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (prob,) = session.run(["melanoma_probability"], {"images": by_hand.astype(np.float32)})
    got, out = run_both(ckpt, path, normalise(image, MEAN, STD).unsqueeze(0))
    assert abs(float(prob[0]) - float(got["melanoma_probability"][0])) <= 1e-6
    assert abs(float(prob[0]) - float(out.calibrated_melanoma_prob(CALIBRATION["temperature"])[0])) <= PROB_TOL


def test_metadata_names_and_dynamic_batch(exported, capsys):
    ckpt, path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert meta["mean"] == pytest.approx(MEAN) and meta["std"] == pytest.approx(STD)
    assert meta["structures"] == STRUCTURES
    assert (meta["image_size"], meta["steps"], meta["variant"], meta["epoch"]) == (64, 3, "deco_gap_3", 4)
    assert meta["threshold"] == CALIBRATION["threshold"] and meta["temperature"] == CALIBRATION["temperature"]
    assert meta["threshold_rule"] == "youden"
    names = ["melanoma_probability", "logits", "attention", "masks", "structure_logits"]
    assert meta["outputs"] == names and meta["input"] == "images"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map == {p.key: p.value for p in model.metadata_props}
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("images", ["batch", 3, 64, 64])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [
        ("melanoma_probability", ["batch"]), ("logits", ["batch", 2]), ("attention", ["batch", 3, 8, 8]),
        ("masks", ["batch", 3, 64, 64]), ("structure_logits", ["batch", 3, 6]),
    ]


@pytest.mark.parametrize("name", [*(n for n in ATTENTIVE if n != "deco_gap_3"), "vgg_gap"])
def test_every_attentive_variant_exports(tmp_path, name):
    """Every variant with an attentive ConvLSTM (``deco_gap_3`` is the module's fixture), and one without."""
    ckpt = write_checkpoint(tmp_path / "best.pt", name)
    result = export_module.export_onnx(ckpt, tmp_path / "model.onnx")
    model = build_model(name, width=TINY, image_size=32, steps=2)
    expected = ["melanoma_probability", "logits"]
    expected += ["attention"] if model.attention is not None else []
    expected += ["masks", "structure_logits"] if model.decoder is not None else []
    assert list(result["outputs"]) == expected
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert (meta["variant"], meta["steps"], meta["image_size"], meta["outputs"]) == (name, 2, 32, expected)
    assert meta["structures"] == STRUCTURES and meta["mean"] == pytest.approx(MEAN)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    got, out = run_both(ckpt, tmp_path / "model.onnx", images)
    assert np.abs(got["melanoma_probability"] - out.calibrated_melanoma_prob(1.7).numpy()).max() <= PROB_TOL
    if "attention" in got:
        assert np.abs(got["attention"] - out.attention.numpy()).max() <= MAP_TOL
    if "masks" in got:
        assert np.abs(got["masks"] - out.masks.numpy()).max() <= MAP_TOL
    assert not list(tmp_path.glob(".*.tmp"))


def test_plain_decoder_is_switched_for_the_export_only(exported):
    ckpt, _ = exported
    model = model_from_checkpoint(load_checkpoint(ckpt))
    assert all(block.fused for block in model.decoder.blocks)
    with export_module.plain_decoder(model):
        assert not any(block.fused for block in model.decoder.blocks)
    assert all(block.fused for block in model.decoder.blocks)


# ----------------------------------------------------------------------------------------------
# Bad input: one line, nothing written
# ----------------------------------------------------------------------------------------------
def test_missing_and_foreign_checkpoints(capsys, tmp_path):
    out = tmp_path / "model.onnx"
    status, _, err = run_cli(capsys, ["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out)])
    one_error_line(status, err, f"checkpoint {tmp_path / 'nope.pt'} does not exist")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    status, _, err = run_cli(capsys, ["export", "--checkpoint", str(junk), "--out", str(out)])
    one_error_line(status, err, f"{junk} is not a dermogaze checkpoint")
    assert not out.exists()


def test_structure_names_that_do_not_fit_the_model(capsys, tmp_path):
    ckpt = write_checkpoint(tmp_path / "best.pt", "deco_gap_5", structures=[*STRUCTURES, "extra"])
    out = tmp_path / "model.onnx"
    status, _, err = run_cli(capsys, ["export", "--checkpoint", str(ckpt), "--out", str(out)])
    one_error_line(status, err, f"checkpoint {ckpt} names 7 structures but its model predicts 6")
    assert not out.exists()


def test_bad_out_paths(capsys, tmp_path, exported):
    ckpt, _ = exported
    status, _, err = run_cli(capsys, ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path)])
    one_error_line(status, err, f"--out {tmp_path} is a folder: give the file to write")
    (tmp_path / "notes.txt").write_text("")
    out = tmp_path / "notes.txt" / "model.onnx"
    status, _, err = run_cli(capsys, ["export", "--checkpoint", str(ckpt), "--out", str(out)])
    one_error_line(status, err, f"--out {out} lies under {tmp_path / 'notes.txt'}, which is not a folder")
    with pytest.raises(SystemExit) as exit_info:  # a usage error: argparse exits
        main(["export", "--checkpoint", str(ckpt), "--format", "tflite", "--out", str(tmp_path / "m.onnx")])
    one_error_line(exit_info.value.code, capsys.readouterr().err, "invalid choice: 'tflite'")


def test_read_only_out(capsys, tmp_path, exported, monkeypatch):
    ckpt, _ = exported
    read_only_folder = tmp_path / "read_only"
    read_only_folder.mkdir()
    access = os.access  # as root a mode-0o500 folder is still writable: deny write access to it instead

    def no_write_access(path, mode, **kwargs):
        if Path(os.path.abspath(path)) == read_only_folder and mode & os.W_OK:
            return False
        return access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", no_write_access)
    out = read_only_folder / "model.onnx"
    status, _, err = run_cli(capsys, ["export", "--checkpoint", str(ckpt), "--out", str(out)])
    one_error_line(status, err, f"--out {out}: cannot write in {read_only_folder} (permission denied")
    assert not out.exists()


def test_missing_export_packages(capsys, tmp_path, exported, monkeypatch):
    ckpt, _ = exported
    find_spec = export_module.importlib.util.find_spec
    monkeypatch.setattr(
        export_module.importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name)
    )
    status, _, err = run_cli(capsys, ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")])
    one_error_line(status, err, "dermogaze export needs onnxruntime: install the export extra")


def test_failed_check_keeps_the_old_file(capsys, tmp_path, exported, monkeypatch):
    """A graph onnxruntime finds different from PyTorch is refused: here the exporter is made to return the graph
    of another checkpoint's weights. The file already there stays, and no temporary is left."""
    _, other_graph = exported
    ckpt = write_checkpoint(tmp_path / "best.pt", "deco_gap_3", image_size=64, steps=3, seed=1)
    monkeypatch.setattr(export_module, "_to_onnx", lambda wrapper, example, source: onnx.load(str(other_graph)))
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous export")
    status, _, err = run_cli(capsys, ["export", "--checkpoint", str(ckpt), "--out", str(out)])
    one_error_line(status, err, "differs from PyTorch's by up to")
    assert err.strip().endswith("in onnxruntime; nothing written")
    assert out.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "model.onnx"]
