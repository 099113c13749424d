"""The training-step benchmark (``benchmarks/bench_train.py``, also ``dermogaze bench``) and the baseline
formulation (``benchmarks/baseline.py``). No timing is tested. The scripts are loaded from their files under
the names they import each other by (:func:`benchmark_script`).

* The baseline (one conv per gate, ``W_a * X'`` every step, the decoder once per step, the encoder's
  backward computed) computes the same loss and gradients as dermogaze's model on the same weights
  and batch, at a tiny size, for every decoder variant.
* FLOP counting: ``FlopCounterMode`` against hand-computed counts (forward hooks give each
  convolution's and dense layer's shapes), up to the paper configuration on the meta device.
* ``dermogaze bench`` runs end to end on a tiny configuration and prints every figure; outside a
  checkout it is one clear error; the script prints its own errors as one line.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torch import nn

from dermogaze.cli import main
from dermogaze.config import LossConfig, load_config
from dermogaze.errors import DermogazeError
from dermogaze.losses import GazeLoss
from dermogaze.models.attention import GATE_ORDER, RECURRENT_ORDER
from dermogaze.runtime import autocast_factory
from dermogaze.structures import NUM_STRUCTURES
from dermogaze.training.loop import train_step

TINY = dict(image_size=32, width=0.125, batch=2, steps=2)
CPU = torch.device("cpu")
REPO_ROOT = Path(__file__).resolve().parents[2]


def benchmark_script(name: str) -> ModuleType:
    """``benchmarks/NAME.py`` as the module ``NAME`` (registered first: ``bench_train`` imports ``baseline`` and
    ``bench_train_options`` by those names, as it does when run from its folder)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


Baseline = benchmark_script("baseline").Baseline
benchmark_script("bench_train_options")
bench = benchmark_script("bench_train")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_pair(variant: str = "deco_gap_3", **kw):
    opts = bench.BenchOptions(variant=variant, **{**TINY, **kw})
    model, baseline = bench.build_pair(opts, CPU)
    batch = bench.make_batch(opts.batch, opts.image_size, seed=opts.seed)
    return model, baseline, batch


def test_make_batch_layout():
    batch = bench.make_batch(3, 32, seed=1)
    assert batch["image"].shape == (3, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["masks"].shape == (3, NUM_STRUCTURES, 32, 32)
    assert set(batch["masks"].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(batch["present"], batch["masks"].flatten(2).amax(-1) > 0)
    assert batch["present"].any(dim=1).all()  # at least one structure per image
    assert batch["label"].tolist() == [0, 1, 0]
    again = bench.make_batch(3, 32, seed=1)
    assert all(torch.equal(batch[k], again[k]) for k in batch)


def test_from_gazenet_splits_the_fused_gate_weights():
    model, baseline, _ = tiny_pair()
    assert isinstance(baseline, Baseline)
    att, base = model.attention, baseline.attention
    c = att.channels
    for k, name in enumerate(RECURRENT_ORDER):  # u_h = [U_a; U_i; U_f; U_o; U_g]
        assert torch.equal(getattr(base, f"u_{name}").weight, att.u_h.weight[k * c : (k + 1) * c])
    for k, name in enumerate(GATE_ORDER):  # w_x = [W_i; W_f; W_o; W_g]
        assert torch.equal(getattr(base, f"w_{name}").weight, att.w_x.weight[k * c : (k + 1) * c])
        assert torch.equal(getattr(base, f"w_{name}").bias, att.w_x.bias[k * c : (k + 1) * c])
    assert torch.equal(base.w_a.weight, att.w_a.weight) and torch.equal(base.v_a.weight, att.v_a.weight)
    # ten separate C -> C convolutions (+ V_a), as the straightforward formulation has
    assert sum(isinstance(m, nn.Conv2d) and m.out_channels == c for m in base.modules()) == 10
    # every parameter of the model, under its own name, holds the same values
    mapped = baseline.gazenet_tensors()
    assert set(mapped) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert torch.equal(mapped[name], p.detach()), name
    # the baseline's encoder is trainable (lr 0 in the optimiser), the model's is frozen
    assert all(p.requires_grad for n, p in baseline.encoder.named_parameters() if n.split(".")[0] in ("0", "3"))
    assert not any(p.requires_grad for p in model.encoder.parameters())


@pytest.mark.parametrize("variant", ["deco_gap_3", "deco_gap_5", "deco_gap_17"])
def test_baseline_computes_the_same_loss_and_gradients(variant):
    model, baseline, batch = tiny_pair(variant)
    loss_fn = GazeLoss(LossConfig())
    terms = {}
    for name, net in (("model", model), ("baseline", baseline)):
        net.zero_grad(set_to_none=True)
        terms[name] = loss_fn(net(batch["image"]), batch)
        terms[name]["loss"].backward()
    torch.testing.assert_close(terms["model"]["loss"], terms["baseline"]["loss"], rtol=1e-5, atol=0)
    for key in ("diag", "seg", "cls"):
        torch.testing.assert_close(terms["model"][key], terms["baseline"][key], rtol=1e-5, atol=1e-7)
    for (tm, sm), (tb, sb) in zip(terms["model"]["matching"], terms["baseline"]["matching"], strict=True):
        np.testing.assert_array_equal(tm, tb)
        np.testing.assert_array_equal(sm, sb)

    grads = baseline.gazenet_tensors(grad=True)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    largest = max(float(grads[n].abs().max()) for n, _ in trained)
    for name, p in trained:
        assert p.grad is not None, name
        # atol: conv biases before a training-mode batch norm have an analytically zero gradient (rounding noise)
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-5, atol=1e-5 * largest, msg=name)
    # the baseline computed the encoder's backward (lr 0), the model did not
    assert baseline.encoder[0].weight.grad is not None and baseline.encoder[0].weight.grad.abs().sum() > 0
    assert model.encoder[0].weight.grad is None
    # the decoder's batch-norm statistics moved the same way (T per-step updates)
    base_buffers = dict(baseline.named_buffers())
    for name, buf in model.decoder.named_buffers():
        if name.rsplit(".", 1)[-1] not in ("running_mean", "running_var", "num_batches_tracked"):
            continue
        torch.testing.assert_close(buf, base_buffers[f"decoder.{name}"], rtol=1e-5, atol=1e-6, msg=name)


def test_compare_formulations_agrees_in_float64_and_leaves_the_originals_alone():
    model, baseline, batch = tiny_pair()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    agreement = bench.compare_formulations(model, baseline, GazeLoss(LossConfig()), batch, tolerance=1e-6)
    assert agreement["ok"], agreement
    assert agreement["dtype"] == "float64" and agreement["batch"] == 2
    assert agreement["matching_equal"] and agreement["baseline_encoder_backward"]
    assert not agreement["grad_missing"] and not agreement["grad_failed"]
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(agreement["per_gradient"]) == trained
    # float64 rounding only: many orders of magnitude below the tolerance
    assert agreement["grad_max_rel_diff"] < 1e-10 and agreement["loss_rel_diff"] < 1e-12
    for name, p in model.named_parameters():  # copies were checked: no grads, same float32 values
        assert p.grad is None and p.dtype == torch.float32 and torch.equal(p, before[name]), name
    assert all(p.grad is None and p.dtype == torch.float32 for p in baseline.parameters())

    small = bench.compare_formulations(model, baseline, GazeLoss(LossConfig()), batch, size=1)
    assert small["ok"] and small["batch"] == 1 and small["loss"] != agreement["loss"]


@pytest.mark.parametrize(
    ("tensor", "factor", "flagged"),
    [
        ("attention.u_f.weight", 1.01, "attention.u_h.weight"),  # a wrong forget-gate kernel
        # a 1e-4 change of one decoder kernel: below float32's rounding at 224 px, far above float64's
        ("decoder.blocks.0.0.weight", 1 + 1e-4, "decoder.blocks.0.0.weight"),
    ],
)
def test_compare_formulations_detects_a_difference(tensor, factor, flagged):
    model, baseline, batch = tiny_pair()
    with torch.no_grad():
        baseline.get_parameter(tensor).mul_(factor)
    agreement = bench.compare_formulations(model, baseline, GazeLoss(LossConfig()), batch)
    assert not agreement["ok"]
    assert flagged in agreement["grad_failed"] and agreement["per_gradient"][flagged] > 1e-6


def test_first_step_counts_flops_and_leaves_the_gradients():
    model, baseline, batch = tiny_pair()
    flops, f32 = bench.first_step(model, baseline, GazeLoss(LossConfig()), batch)
    # the frozen encoder's backward is skipped: fewer FLOPs for dermogaze
    assert flops["dermogaze"]["forward_backward"] < flops["baseline"]["forward_backward"]
    assert flops["baseline"]["forward_backward"] > 2 * flops["baseline"]["forward"]
    assert f32["loss_rel_diff"] < 1e-6 and f32["grad_max_rel_diff"] < 1e-4
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert math.isclose(f32["loss"]["baseline"], f32["loss"]["dermogaze"], rel_tol=1e-6)


def _hand_flops(net: nn.Module, run) -> tuple[int, list[int], int]:
    """FLOPs from each Conv2d/Linear's shapes (2 per multiply-add), via forward hooks.

    Returns:
        forward FLOPs, forward FLOPs of each layer call, backward FLOPs (the weight gradient costs
        what the forward costs, and so does the input gradient, when the input needs one).
    """
    per_layer: list[int] = []
    backward = [0]

    def hook(m, inputs, out):
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            per_layer.append(2 * out.numel() * k)
        else:
            per_layer.append(2 * out.numel() * m.in_features)
        backward[0] += per_layer[-1] * (2 if inputs[0].requires_grad else 1)

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return sum(per_layer), per_layer, backward[0]


def test_flop_counter_matches_hand_counts_forward_and_backward():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    )
    x = torch.randn(2, 3, 6, 6)
    conv1 = 2 * (2 * 8 * 6 * 6) * (3 * 9)
    conv2 = 2 * (2 * 4 * 6 * 6) * (8 * 9)
    dense = 2 * (2 * 5) * (4 * 6 * 6)
    fwd, out = bench.count_flops(lambda: net(x))
    assert fwd == conv1 + conv2 + dense
    bwd, _ = bench.count_flops(lambda: out.sum().backward())
    # weight gradients for every layer; input gradients for all but the first (x needs no gradient)
    assert bwd == conv1 + 2 * conv2 + 2 * dense


def test_baseline_flops_at_the_paper_configuration_by_hand():
    """Counted on the meta device (shapes only): about 500 GFLOP per image forward+backward."""
    opts = bench.BenchOptions()  # 224 px, T = 5, width 1, deco_gap_3
    model, baseline = bench.build_pair(opts, torch.device("meta"))
    images = torch.empty(1, 3, 224, 224, device="meta")
    fwd, out = bench.count_flops(lambda: baseline(images))
    hand, per_layer, hand_backward = _hand_flops(baseline, lambda: baseline(images))
    assert fwd == hand
    # attention: W_a, U_a and 8 gate convs C -> C at 28x28 and V_a, at every step (T = 5)
    _, attention_layers, _ = _hand_flops(baseline.attention, lambda: baseline(images))
    assert len(attention_layers) == 11 * 5
    assert attention_layers.count(2 * 256 * 28 * 28 * 256 * 9) == 10 * 5
    loss = out.logits.sum() + out.masks.sum() + out.structure_logits.sum()
    bwd, _ = bench.count_flops(lambda: loss.backward())
    # no input gradient for the first conv (the image) nor for the five U convs of H_0 = 0
    assert bwd == hand_backward == 2 * fwd - per_layer[0] - 5 * 2 * 256 * 28 * 28 * 256 * 9
    assert 450e9 < fwd + bwd < 550e9

    model_fwd, model_out = bench.count_flops(lambda: model(images))
    assert model_fwd < fwd  # W_a * X' once, no recurrent convolutions of H_0 = 0


def test_bench_command_needs_a_checkout(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)  # no benchmarks/bench_train.py here nor above
    assert main(["bench"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dermogaze: error:"), captured.err
    assert "benchmarks/bench_train.py" in lines[0] and "checkout" in lines[0]
    assert captured.out == ""


@pytest.mark.slow  # a benchmark script in a subprocess per case
def test_script_prints_its_errors_as_one_line():
    script = REPO_ROOT / "benchmarks" / "bench_train.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--image-size", "48", "--no-progress"], capture_output=True, text=True, cwd="/"
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "bench_train: error: --image-size and --explain-size must be multiples of 32 (five VGG pools)"
    ]


def test_bench_help_lists_the_options(monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--image-size", "--steps", "--width", "--batch", "--device", "--amp", "--reference", "--json"):
        assert option in text, option
    assert bench.build_parser().parse_args([]).device == "auto"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(DermogazeError, match="no CUDA GPU"):
        bench.run_benchmark(bench.BenchOptions(device="cuda", **TINY), progress=False)


def test_bf16_autocast_step_runs_in_bf16_and_keeps_the_loss_in_float32():
    """The GPU path of ``--amp bf16`` (autocast, outputs cast back for the loss), exercised on the CPU."""
    model, baseline, batch = tiny_pair()
    loss_fn = GazeLoss(LossConfig())
    with torch.no_grad():
        reference = float(loss_fn(model(batch["image"]), batch)["loss"])
    autocast = autocast_factory(CPU, "bf16", cpu=True)
    with autocast():
        out = model(batch["image"])
    assert out.logits.dtype == torch.bfloat16 and out.masks.dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in (out.float().logits, out.float().masks, out.float().attention))
    optimizer = bench.paper_optimizer(model)
    terms = train_step(model, loss_fn, optimizer, batch, CPU, autocast=autocast)  # the step the bench times
    loss = float(terms["loss"].detach())
    assert math.isfinite(loss) and loss == pytest.approx(reference, rel=0.05)  # bf16 keeps ~3 significant digits
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_bad_options_are_clear_errors():
    with pytest.raises(DermogazeError, match="multiples of 32"):
        bench.run_benchmark(bench.BenchOptions(image_size=48), progress=False)
    with pytest.raises(DermogazeError, match="attentive ConvLSTM"):
        bench.build_pair(bench.BenchOptions(variant="vgg", **TINY), CPU)


@pytest.mark.slow  # times real training steps
def test_bench_command_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)  # dermogaze bench finds benchmarks/bench_train.py from the working folder
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench", "--image-size", "32", "--width", "0.125", "--batch", "2", "--steps", "2", "--repeats", "1",
            "--warmup", "0", "--explain-size", "32", "--explain-repeats", "2", "--agreement-batch", "1",
            "--no-progress", "--json", str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    for field in (
        "FLOPs per image, forward", "FLOPs per image, forward+backward", "median step time", "achieved GFLOP/s",
        "peak RSS (MB)", "rise during 2 steps", "speed-up (baseline time / dermogaze time)", "fp32 matmul",
        "utilisation, dermogaze in the baseline's FLOPs", "peak memory, dermogaze / baseline",
        "agreement (float64 copies, same weights, 1/2 samples of the batch)", "matching equal", "OK",
        "float32 first step, for information", "explain latency", "load average",
    ):
        assert field in text, field

    r = json.loads(out.read_text())
    assert r["config"]["image_size"] == 32 and r["config"]["batch"] == 2 and r["config"]["steps"] == 2
    fl = r["flops_per_image"]
    assert 0 < fl["dermogaze"]["forward_backward"] < fl["baseline"]["forward_backward"]
    for kind in ("baseline", "dermogaze"):
        assert len(r["step_time_s"][kind]["samples"]) == 1 and r["step_time_s"][kind]["median"] > 0
        assert r["memory"][kind]["peak_mb"] > 0
        step = r["flops_per_image"][kind]["forward_backward"] * 2
        assert math.isclose(r["achieved_gflops"][kind], step / r["step_time_s"][kind]["median"] / 1e9)
    assert math.isclose(r["speedup"], r["step_time_s"]["baseline"]["median"] / r["step_time_s"]["dermogaze"]["median"])
    u = r["utilisation"]["dermogaze_in_baseline_flops"]
    expected = fl["baseline"]["forward_backward"] * 2 / r["step_time_s"]["dermogaze"]["median"] / 1e9
    assert math.isclose(u, expected / r["matmul"]["gflops"])
    assert r["agreement"]["ok"] and r["targets"]["agreement"]
    assert len(r["explain"]["samples"]) == 2 and r["explain"]["image_size"] == 32
    assert set(r["targets"]) == {"speedup", "memory", "utilisation", "agreement"}


def test_bench_against_its_own_fp32_step(tmp_path, monkeypatch, capsys):
    """``--reference fp32``: the GPU check of ``--amp``/``--channels-last`` (run here on the CPU, tiny)."""
    monkeypatch.chdir(REPO_ROOT)
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench", "--image-size", "32", "--width", "0.125", "--batch", "2", "--steps", "2", "--repeats", "1",
            "--warmup", "0", "--explain-size", "32", "--explain-repeats", "1", "--reference", "fp32",
            "--amp", "bf16", "--channels-last", "--no-memory", "--no-progress", "--json", str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    for field in (
        "dermogaze step: amp bf16, channels_last", "reference: dermogaze's own step, eager fp32",
        "speed-up (fp32 eager time / dermogaze time)", "[GPU target >= 3x:", "agreement with the baseline: not checked",
    ):
        assert field in text, field
    assert "float32 first step" not in text
    r = json.loads(out.read_text())
    assert r["config"]["reference"] == "fp32" and r["speedup_target"] == 3.0
    fl = r["flops_per_image"]  # the same network on both sides
    assert fl["baseline"] == fl["dermogaze"]
    assert r["targets"] == {"speedup": r["speedup"] >= 3.0, "memory": None, "utilisation": None, "agreement": None}


def test_fp32_reference_is_a_copy_of_the_model():
    model, reference = bench.build_pair(bench.BenchOptions(reference="fp32", **TINY), CPU)
    assert type(reference) is type(model) and reference is not model
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr() and p.requires_grad == q.requires_grad, name
    with pytest.raises(DermogazeError, match="--reference"):
        bench.run_benchmark(bench.BenchOptions(reference="fp16", **TINY), progress=False)


# --------------------------------------------------------------------------------------------
# benchmarks/attention_supervision.py: which runs it trains and reuses
# --------------------------------------------------------------------------------------------
def test_attention_benchmark_unsupervised_run_is_the_papers_loss(tmp_path):
    sup = benchmark_script("attention_supervision")
    options = ["loss.attention_warmup=8", "train.epochs=3"]
    paper = sup.run_config(tmp_path, 0, 1, options)
    assert (paper.loss.attention, paper.loss.attention_warmup, paper.loss.attention_matching) == (0.0, 0, False)
    assert (paper.train.epochs, paper.train.seed, paper.data.cache) == (3, 1, str(tmp_path))
    supervised = sup.run_config(tmp_path, 1.5, 1, options)
    assert (supervised.loss.attention, supervised.loss.attention_warmup) == (1.5, 8)
    assert supervised.loss.attention_matching is load_config("demo").loss.attention_matching  # the preset's
    # both runs share every other setting, the preset's sampling included
    assert supervised.train == paper.train and supervised.model == paper.model
    assert sup.run_dir(tmp_path, 0, 1, options) == tmp_path / "lambda_0+epochs=3" / "seed_1"


def test_attention_benchmark_reuses_only_a_run_of_the_same_configuration(tmp_path):
    import yaml

    sup = benchmark_script("attention_supervision")
    cfg = load_config("demo", ["train.epochs=2"])
    run = tmp_path / "run"
    run.mkdir()
    assert not sup.trained(run, cfg)  # nothing there
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))  # what train() writes, with two epochs
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    (run / "best.pt").write_bytes(b"")
    assert sup.trained(run, cfg)
    assert not sup.trained(run, load_config("demo", ["train.epochs=3"]))  # unfinished: resumed, not reused
    other = load_config("demo", ["train.epochs=2", "train.repeat_threshold=0"])
    with pytest.raises(SystemExit, match=r"another configuration \(train.repeat_threshold: 1.0 there, 0.0 now\)"):
        sup.trained(run, other)


def test_attention_benchmark_summary_rebuilds_the_options_table_from_its_record(tmp_path, capsys):
    """``--summary`` writes the committed options table from the files kept beside it; a new results file joins."""
    import shutil

    sup = benchmark_script("attention_supervision")
    results = REPO_ROOT / "benchmarks" / "results"
    for name in ("attention_supervision.json", "attention_supervision_options.json"):
        shutil.copy(results / name, tmp_path / name)
    stem = tmp_path / "attention_supervision"
    assert sup.main(["--summary", "--results", str(stem)]) == 0
    table = (tmp_path / "attention_supervision_options.md").read_text()
    assert table == (results / "attention_supervision_options.md").read_text()
    record = json.loads((tmp_path / "attention_supervision_options.json").read_text())
    assert record == json.loads((results / "attention_supervision_options.json").read_text())

    report = json.loads((results / "attention_supervision.json").read_text())
    (tmp_path / "attention_supervision_new.json").write_text(json.dumps({**report, "overrides": ["x.y=1"]}))
    assert sup.main(["--summary", "--results", str(stem)]) == 0
    entries = json.loads((tmp_path / "attention_supervision_options.json").read_text())["options"]
    assert [e["results"] for e in entries] == sorted([e["results"] for e in record["options"]] + [
        "attention_supervision_new"])
    assert "| attention_supervision_new | 1 | x.y=1 | test | 9/9, 9/9, 9/9 |" in capsys.readouterr().out
