"""``dermogaze export``: the ONNX graph against PyTorch in onnxruntime, every attentive variant, metadata, bad input.

Checkpoints are written here from tiny random models (width 1/8, 32-64 px) with a non-zero ``V_a``
(non-uniform attention), trained-looking batch norms and dense biases, six structure names that are not ISIC 2017's
and a temperature other than 1, so that each of them is seen to reach the exported file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
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
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.bias.normal_(0.0, 0.1)
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


@pytest.mark.slow  # an ONNX export per variant (the demo's deco_gap_3 is exported by the fast tests)
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


# ----------------------------------------------------------------------------------------------
# int8: static quantization, checked against the float model before it is written
# ----------------------------------------------------------------------------------------------
def cache_images(cache, split, mean, std):
    """A split's images normalised by hand from the cache's arrays (center crop 40 -> 32 px), ``(N, 3, 32, 32)``."""
    images = np.load(Path(cache) / split / "images.npy")  # (N, 40, 40, 3) uint8
    crop = images[:, 4:36, 4:36]
    return torch.from_numpy(((crop / 255.0 - np.array(mean)) / np.array(std)).transpose(0, 3, 1, 2).astype(np.float32))


@pytest.fixture(scope="module")
def int8_exported(tmp_path_factory, pipeline_cache):
    """``deco_gap_3`` (T = 2, 32 px) exported in int8 by the command line, calibrated and checked on the pipeline
    cache: ``(checkpoint, model.onnx, stdout, float graph)``; the float graph the exporter traced is kept, so that
    later tests can skip the tracing."""
    folder = tmp_path_factory.mktemp("int8")
    ckpt = write_checkpoint(folder / "best.pt", "deco_gap_3", image_size=32, steps=2)
    out = folder / "model.onnx"
    traced = []

    def keep(*args):
        traced.append(to_onnx(*args).SerializeToString())
        return onnx.load_from_string(traced[0])

    to_onnx = export_module._to_onnx
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_module, "_to_onnx", keep)
        argv = ["export", "--checkpoint", str(ckpt), "--out", str(out), "--quantize", "int8", "--data",
                str(pipeline_cache), "--calibration-images", "16"]
        with contextlib.redirect_stdout(io.StringIO()) as stdout:
            assert main(argv) == 0
    return ckpt, out, stdout.getvalue(), traced[0]


def test_int8_meets_the_tolerances_against_pytorch(int8_exported, pipeline_cache):
    """The int8 file, run in onnxruntime on the cache's val and test images (normalised here by hand), against the
    network in PyTorch: the criteria of the check, recomputed independently, and a graph that is really int8."""
    ckpt_path, path, _, _ = int8_exported
    images = torch.cat([cache_images(pipeline_cache, split, MEAN, STD) for split in ("val", "test")])
    got, out = run_both(ckpt_path, path, images)
    prob = out.calibrated_melanoma_prob(CALIBRATION["temperature"]).numpy()
    assert np.abs(got["melanoma_probability"] - prob).max() <= 0.01
    threshold = CALIBRATION["threshold"]
    assert np.mean((got["melanoma_probability"] >= threshold) == (prob >= threshold)) >= 0.99
    assert np.mean(got["structure_logits"].argmax(-1) == out.structure_logits.numpy().argmax(-1)) >= 0.98
    assert 0 < np.abs(got["melanoma_probability"] - prob).max()  # not the float graph under another name
    assert np.abs(got["attention"] - out.attention.numpy()).max() <= 0.05
    np.testing.assert_allclose(got["attention"].sum(axis=(2, 3)), 1.0, atol=1e-5)  # softmax in float
    graph = onnx.load(str(path)).graph
    types = {i.name: i.data_type for i in graph.initializer}
    assert types["model.encoder.0.weight_quantized"] == onnx.TensorProto.INT8
    assert types["model.attention.w_x.weight_quantized"] == onnx.TensorProto.INT8  # the gates' convolutions
    for name in export_module.int8_float_parameters(export_module.ExportedGazeNet(model_from_checkpoint(
            load_checkpoint(ckpt_path)))):  # the logit layers: float weights
        assert types[name] == onnx.TensorProto.FLOAT, name
    assert "model.encoder.0.weight" not in types
    assert not any(node.op_type in ("Softmax", "Sigmoid", "Tanh") and "QuantizeLinear" in " ".join(node.input)
                   for node in graph.node)


def test_int8_metadata(int8_exported, pipeline_cache):
    ckpt_path, path, stdout, _ = int8_exported
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert meta["structures"] == STRUCTURES and meta["threshold"] == CALIBRATION["threshold"]
    q = meta["quantization"]
    assert (q["method"], q["format"], q["operators"]) == ("static", "QDQ", ["Conv", "Gemm"])
    assert (q["plan"], q["rejected_plans"]) == ("full", [])
    assert q["float_parameters"] == ["model.diagnosis.head.fc.weight", "model.attention.v_a.weight",
                                     "model.decoder.blocks.2.3.weight", "model.decoder.classifier.fc2.weight"]
    assert q["calibration_images"] == 16 and q["calibration_set"] == f"train split of {pipeline_cache.name}"
    assert q["check_images"] == 16 and q["check_set"] == f"val and test splits of {pipeline_cache.name}"
    assert q["tolerance"] == {"max_abs_dp": 0.01, "decision_agreement": 0.99, "named_agreement": 0.98}
    # the parity figures, recomputed against PyTorch (which the float graph matches to 1e-4)
    images = torch.cat([cache_images(pipeline_cache, split, MEAN, STD) for split in ("val", "test")])
    got, out = run_both(ckpt_path, path, images)
    prob = out.calibrated_melanoma_prob(CALIBRATION["temperature"]).numpy()
    assert q["parity"]["max_abs_dp"] == pytest.approx(np.abs(got["melanoma_probability"] - prob).max(), abs=2e-4)
    assert q["parity"]["decision_agreement"] == 1.0 and q["parity"]["named_agreement"] == 1.0
    assert f"within {q['parity']['max_abs_dp']:.4f}, the same decision on 100.0% of the images" in stdout
    assert "calibrated on 16 inputs (train split of" in stdout and "against the float model on 16 inputs" in stdout


def test_int8_parity_figures_by_hand():
    p_float = np.array([0.10, 0.50, 0.36, 0.90])
    p_int8 = np.array([0.11, 0.50, 0.38, 0.895])  # the third image crosses the threshold 0.37
    named_float = np.array([[0, 1], [2, 2], [3, 4], [5, 5]])
    named_int8 = np.array([[0, 1], [2, 3], [3, 4], [5, 5]])  # one step of eight named otherwise
    parity = export_module.int8_parity(p_float, p_int8, named_float, named_int8, 0.37)
    assert parity == pytest.approx({"max_abs_dp": 0.02, "decision_agreement": 0.75, "named_agreement": 0.875})
    assert export_module.int8_parity(p_float, p_float, None, None, 0.37) == {
        "max_abs_dp": 0.0, "decision_agreement": 1.0, "named_agreement": None}
    failures = export_module.int8_failures(parity)
    assert failures == [
        "P(melanoma) differs by up to 0.0200 (at most 0.01 allowed)",
        "the same decision on 75.0% of the images (at least 99% needed)",
        "the same named structure at 87.5% of the gaze steps (at least 98% needed)",
    ]
    assert export_module.int8_failures({"max_abs_dp": 0.01, "decision_agreement": 0.99, "named_agreement": 0.98}) == []
    nan = export_module.int8_parity(p_float, np.array([0.1, np.nan, 0.36, 0.9]), None, None, 0.37)
    assert export_module.int8_failures(nan) == ["P(melanoma) differs by up to nan (at most 0.01 allowed)",
                                                "the same decision on 75.0% of the images (at least 99% needed)"]


@pytest.mark.parametrize("name", list_models())
def test_int8_float_layers_of_every_variant(name):
    """The layers each plan keeps float, named as the graph names their weights (the wrapper's parameters)."""
    wrapper = export_module.ExportedGazeNet(build_model(name, width=TINY, image_size=32, steps=2))
    parameters = dict(wrapper.named_parameters())
    full = export_module.int8_float_parameters(wrapper, "full")
    model = wrapper.model
    assert len(full) == 1 + (model.attention is not None) + 2 * (model.decoder is not None)  # the logit layers
    assert all(parameters[name].dim() in (2, 4) for name in full)
    assert full[0].startswith("model.diagnosis.") and parameters[full[0]].shape[0] == 2  # the diagnosis logits
    decoder = export_module.int8_float_parameters(wrapper, "decoder")
    layers = [n for n, p in parameters.items() if n.endswith(".weight") and p.dim() in (2, 4)]  # conv and dense
    assert sorted(set(layers) - set(decoder)) == sorted(
        n for n in layers if n.startswith("model.decoder.") and n not in full)
    with pytest.raises(ValueError, match="unknown int8 plan 'half'"):
        export_module.int8_float_parameters(wrapper, "half")


def test_int8_with_random_inputs(tmp_path, exported, monkeypatch):
    """Without a cache the int8 model is calibrated and checked on seeded random inputs, and says so."""
    ckpt, float_graph = exported
    monkeypatch.setattr(export_module, "_to_onnx", lambda *args: onnx.load(str(float_graph)))
    result = export_module.export_onnx(ckpt, tmp_path / "model.onnx", quantize="int8", calibration_images=8)
    q = result["metadata"]["quantization"]
    assert q["calibration_set"] == q["check_set"] == "seeded random normal inputs"
    assert (q["calibration_images"], q["check_images"]) == (8, export_module.RANDOM_CHECK_IMAGES)
    assert q["parity"]["max_abs_dp"] <= 0.01 and q["parity"]["named_agreement"] >= 0.98
    assert result["bytes"] < result["float_bytes"] / 2 == float_graph.stat().st_size / 2
    assert {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props} == (
        result["metadata"])


def shifted_melanoma_bias(shift):
    """The real quantizer, then the melanoma logit's bias (a float layer) moved by ``shift``: a perturbed weight."""
    quantize = export_module.quantize_int8

    def perturbed(*args):
        proto = quantize(*args)
        (bias,) = [i for i in proto.graph.initializer if i.name == "model.diagnosis.head.fc.bias"]
        values = onnx.numpy_helper.to_array(bias).copy()  # (2,)
        values[1] += shift
        bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
        return proto

    return perturbed


def test_int8_outside_the_tolerance_is_refused_and_the_old_file_kept(capsys, tmp_path, int8_exported, pipeline_cache,
                                                                     monkeypatch):
    """Quantized graphs whose melanoma bias is moved by 2, whatever the plan: refused in one line that names each plan,
    the criteria it missed and their figures (P(melanoma) moves by sigmoid((m + 2) / T) - sigmoid(m / T),
    recomputed here from PyTorch's margins m); the file already there stays byte-identical, no temporary is left."""
    ckpt, _, _, float_graph = int8_exported
    monkeypatch.setattr(export_module, "_to_onnx", lambda *args: onnx.load_from_string(float_graph))
    monkeypatch.setattr(export_module, "quantize_int8", shifted_melanoma_bias(2.0))
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous export")
    argv = ["export", "--checkpoint", str(ckpt), "--out", str(out), "--quantize", "int8", "--data",
            str(pipeline_cache), "--calibration-images", "16"]
    status, stdout, err = run_cli(capsys, argv)
    one_error_line(status, err, f"int8 export of {ckpt} refused: against the float model on 16 inputs (val and test "
                                f"splits of {pipeline_cache.name}), quantizing every convolution and dense layer but "
                                "the four logit layers: P(melanoma) differs by up to ")
    assert "; quantizing the structure decoder only, but its two logit layers: P(melanoma) differs by up to " in err
    assert err.strip().endswith("allowed); nothing written") and stdout == ""
    figures = [float(part.split()[0]) for part in err.split("differs by up to ")[1:]]
    model = model_from_checkpoint(load_checkpoint(ckpt))
    with torch.no_grad():
        margin = model(torch.cat([cache_images(pipeline_cache, s, MEAN, STD) for s in ("val", "test")])).melanoma_margin
    temperature = CALIBRATION["temperature"]
    expected = (torch.sigmoid((margin + 2.0) / temperature) - torch.sigmoid(margin / temperature)).max().item()
    assert figures[0] == pytest.approx(expected, abs=0.01)  # the shift, plus the quantization's own error (< 0.01)
    assert figures[1] == pytest.approx(expected, abs=1e-4)  # the decoder plan computes P(melanoma) in float
    assert out.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_int8_falls_back_to_the_decoder_plan(capsys, tmp_path, int8_exported, pipeline_cache, monkeypatch):
    """When the full plan misses the tolerance (here its graphs get the moved bias; the decoder plan's do not), the
    decoder plan is written: the encoder, attention and diagnosis layers float, P(melanoma) the float model's."""
    ckpt, _, _, float_graph = int8_exported
    monkeypatch.setattr(export_module, "_to_onnx", lambda *args: onnx.load_from_string(float_graph))
    quantize, perturbed = export_module.quantize_int8, shifted_melanoma_bias(2.0)

    def full_plan_perturbed(float_model, calibration, float_parameters):
        full = "model.encoder.0.weight" not in float_parameters
        return (perturbed if full else quantize)(float_model, calibration, float_parameters)

    monkeypatch.setattr(export_module, "quantize_int8", full_plan_perturbed)
    out = tmp_path / "model.onnx"
    argv = ["export", "--checkpoint", str(ckpt), "--out", str(out), "--quantize", "int8", "--data",
            str(pipeline_cache), "--calibration-images", "16"]
    status, stdout, _ = run_cli(capsys, argv)
    assert status == 0
    assert "int8 plan full not kept: P(melanoma) differs by up to " in stdout
    assert "int8 plan decoder (the structure decoder only, but its two logit layers; " in stdout
    q = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["quantization"])
    assert q["plan"] == "decoder" and [r["plan"] for r in q["rejected_plans"]] == ["full"]
    assert q["rejected_plans"][0]["parity"]["max_abs_dp"] > 0.01
    graph = onnx.load(str(out)).graph
    types = {i.name: i.data_type for i in graph.initializer}
    weights = {node.input[1].removesuffix("_DequantizeLinear_Output") for node in graph.node
               if node.op_type in ("Conv", "Gemm")}
    quantized = sorted(w for w in weights if types.get(f"{w}_quantized") == onnx.TensorProto.INT8)
    assert quantized and all(w.startswith("model.decoder.") for w in quantized)
    assert sorted(weights - set(quantized)) == sorted(q["float_parameters"])
    images = torch.cat([cache_images(pipeline_cache, split, MEAN, STD) for split in ("val", "test")])
    got, model_out = run_both(ckpt, out, images)
    prob = model_out.calibrated_melanoma_prob(CALIBRATION["temperature"]).numpy()
    assert np.abs(got["melanoma_probability"] - prob).max() <= PROB_TOL
    assert q["parity"]["max_abs_dp"] <= PROB_TOL and q["parity"]["named_agreement"] >= 0.98


def test_int8_bad_options(capsys, tmp_path, exported):
    ckpt, _ = exported
    out = tmp_path / "model.onnx"
    status, _, err = run_cli(capsys, ["export", "--checkpoint", str(ckpt), "--out", str(out), "--data", str(tmp_path)])
    one_error_line(status, err, "--data and --calibration-images calibrate and check an int8 export: add --quantize "
                                "int8")
    for argv, expected in [
        (["--quantize", "int4"], "invalid choice: 'int4'"),
        (["--quantize", "int8", "--calibration-images", "0"], "expected an integer >= 1, got 0"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["export", "--checkpoint", str(ckpt), "--out", str(out), *argv])
        one_error_line(exit_info.value.code, capsys.readouterr().err, expected)
    assert not out.exists()


def test_int8_cache_without_check_splits(capsys, tmp_path, int8_exported, pipeline_cache, monkeypatch):
    """A cache without a train split or without val and test splits cannot calibrate or check: one line."""
    ckpt, _, _, float_graph = int8_exported
    monkeypatch.setattr(export_module, "_to_onnx", lambda *args: onnx.load_from_string(float_graph))
    cache = tmp_path / "train_only"
    shutil.copytree(pipeline_cache / "train", cache / "train")
    info = json.loads((pipeline_cache / "info.json").read_text())
    (cache / "info.json").write_text(json.dumps({**info, "splits": ["train"]}))
    out = tmp_path / "model.onnx"
    argv = ["export", "--checkpoint", str(ckpt), "--out", str(out), "--quantize", "int8", "--data", str(cache)]
    status, _, err = run_cli(capsys, argv)
    one_error_line(status, err, f"{cache}: an int8 export calibrates on the cache's train split and checks on its "
                                "val and test splits; this cache has train")
    status, _, err = run_cli(capsys, [*argv[:-1], str(tmp_path / "nowhere")])
    one_error_line(status, err, f"{tmp_path / 'nowhere'}: no prepared cache here")
    assert not out.exists()
