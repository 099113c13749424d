"""bf16 autocast on the CPU, end to end: checkpoints, resume, inference parity with float32, the float32 boundary of
the loss and the metrics, and the float32 fallback of a CPU without native bf16.

A CPU with native bf16 is simulated by patching :func:`dermogaze.runtime.native_cpu_bf16`: on a CPU without it the
autocast then runs PyTorch's emulated bf16 kernels, whose roundings are bf16's. Each test also checks that bf16 did
run (results that differ from float32's), so that none passes by comparing float32 with itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dermogaze import runtime
from dermogaze.config import load_config
from dermogaze.files import read_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
#: Inference of one float32 checkpoint in bf16 against float32 (benchmarks/bf16_parity.py's criteria).
MAX_ABS_DP = 0.01
SAME_DECISION = 0.99
SAME_NAMED = 0.98


@pytest.fixture
def native_bf16(monkeypatch):
    """This CPU counts as having native bf16."""
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: True)


def _rows(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock time."""
    return [{k: v for k, v in row.items() if k != "time_s"} for row in read_jsonl(run / "metrics.jsonl")]


def _tiny(cache: Path, *overrides: str):
    """``configs/tiny.yaml`` on ``cache``, two training batches per epoch."""
    return load_config("tiny", [f"data.cache={cache}", "train.max_train_batches=2", *overrides])


@pytest.fixture(scope="module")
def bf16_run(one_thread, pipeline_cache, tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch bf16 run of :func:`_tiny` (on one thread, like every run of this module)."""
    from dermogaze.training import train

    run = tmp_path_factory.mktemp("bf16") / "tiny_bf16"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime, "native_cpu_bf16", lambda: True)
        train(_tiny(pipeline_cache, "train.amp=bf16"), run, progress=False)
    return run


@pytest.fixture(scope="module")
def fp32_run(one_thread, pipeline_cache, tmp_path_factory) -> Path:
    """The same run in float32."""
    from dermogaze.training import train

    run = tmp_path_factory.mktemp("fp32") / "tiny_fp32"
    train(_tiny(pipeline_cache), run, progress=False)
    return run


def _float_tensors(state) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}


def test_bf16_run_writes_float32_checkpoints_and_resumes_exactly(native_bf16, pipeline_cache, fp32_run, bf16_run,
                                                                 tmp_path):
    from dermogaze.training import train
    from dermogaze.training.checkpoint import load_checkpoint

    run = tmp_path / "interrupted"
    train(_tiny(pipeline_cache, "train.amp=bf16", "train.epochs=1"), run, progress=False)
    one = load_checkpoint(run / "last.pt")
    assert one["config"]["train"]["amp"] == "bf16"
    weights = _float_tensors(one["model"])
    assert weights and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())
    moments = [v for s in one["optimizer"]["state"].values() for v in _float_tensors(s).values()]
    assert moments and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in moments)

    train(_tiny(pipeline_cache, "train.amp=bf16"), run, resume=True, progress=False)

    assert len(_rows(run)) == 2 and _rows(run) == _rows(bf16_run)  # the resumed run continues the same bf16 run
    a, b = load_checkpoint(bf16_run / "last.pt"), load_checkpoint(run / "last.pt")
    for k, v in _float_tensors(a["model"]).items():
        assert b["model"][k].dtype == torch.float32
        torch.testing.assert_close(b["model"][k], v, rtol=0, atol=1e-6, msg=k)
    assert _rows(bf16_run)[0]["train_loss"] != _rows(fp32_run)[0]["train_loss"]  # bf16 ran, not float32


def test_a_cpu_without_native_bf16_trains_in_float32_and_says_so_once(monkeypatch, pipeline_cache, fp32_run, tmp_path,
                                                                       caplog):
    from dermogaze.training import train

    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: False)
    runtime._say_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="dermogaze.runtime"):
        train(_tiny(pipeline_cache, "train.amp=bf16"), tmp_path / "run", progress=False)
    runtime._say_once.cache_clear()
    lines = [r.getMessage() for r in caplog.records if r.name == "dermogaze.runtime"]
    assert len(lines) == 1 and "no native bfloat16" in lines[0] and "float32" in lines[0]
    assert _rows(tmp_path / "run") == _rows(fp32_run)  # exactly the float32 run


def _test_split_outputs(checkpoint: Path, cache: Path, amp: str) -> dict[str, np.ndarray]:
    """Calibrated P(melanoma), named structures and raw logits of ``checkpoint`` on the test split, in ``amp``."""
    from dermogaze.data.dataset import DermoscopyDataset
    from dermogaze.training.checkpoint import load_checkpoint, model_from_checkpoint
    from dermogaze.training.loop import forward_batch

    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt).eval()
    dataset = DermoscopyDataset(cache, "test", image_size=int(ckpt["image_size"]),
                                normalisation=(ckpt["mean"], ckpt["std"]))
    autocast = runtime.autocast_factory(CPU, amp)
    temperature = float(ckpt["calibration"]["temperature"])
    p, named, logits = [], [], []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=4):
            _, out = forward_batch(model, batch, CPU, autocast=autocast)
            p.append(out.calibrated_melanoma_prob(temperature).numpy())
            named.append(out.structure_logits.argmax(-1).numpy())
            logits.append(out.structure_logits.numpy())
    return {"p": np.concatenate(p), "named": np.concatenate(named), "logits": np.concatenate(logits),
            "threshold": float(ckpt["calibration"]["threshold"])}


def test_bf16_inference_of_a_float32_checkpoint_agrees_with_float32(native_bf16, pipeline_cache, pipeline_tiny_run,
                                                                    tmp_path):
    from dermogaze.apps.predict import predict

    checkpoint = pipeline_tiny_run / "best.pt"
    ref = _test_split_outputs(checkpoint, pipeline_cache, "off")
    low = _test_split_outputs(checkpoint, pipeline_cache, "bf16")
    assert not np.array_equal(low["logits"], ref["logits"])  # bf16 ran
    assert np.abs(low["p"] - ref["p"]).max() <= MAX_ABS_DP
    t = ref["threshold"]
    assert np.mean((low["p"] >= t) == (ref["p"] >= t)) >= SAME_DECISION
    assert np.mean(low["named"] == ref["named"]) >= SAME_NAMED

    # predict --amp bf16: the same probabilities as its float32 run, within the same tolerance
    files = {amp: predict(checkpoint, pipeline_cache, "test", tmp_path / f"{amp}.csv", fmt="isic2017-part3", amp=amp,
                          progress=False)["files"] for amp in ("off", "bf16")}
    probs = {amp: np.loadtxt(path, delimiter=",", skiprows=1, usecols=1) for amp, path in files.items()}
    np.testing.assert_allclose(probs["bf16"], probs["off"], rtol=0, atol=MAX_ABS_DP)
    np.testing.assert_allclose(probs["off"], ref["p"], rtol=0, atol=1e-6)


def test_loss_and_metrics_receive_float32_under_bf16_autocast(native_bf16, monkeypatch, pipeline_cache):
    from dermogaze.data.cache import load_info
    from dermogaze.data.dataset import DermoscopyDataset
    from dermogaze.losses import GazeLoss
    from dermogaze.metrics.accumulator import EvaluationAccumulator
    from dermogaze.metrics.explanation import ExplanationAccumulator
    from dermogaze.models import build_model
    from dermogaze.training.loop import run_inference, train_step

    cfg = _tiny(pipeline_cache)
    info = load_info(pipeline_cache)
    torch.manual_seed(0)
    model = build_model(cfg.model.name, steps=cfg.model.steps, image_size=cfg.model.image_size,
                        width=cfg.model.width, batch_norm=cfg.model.batch_norm, num_structures=len(info["structures"]))
    loss_fn = GazeLoss(cfg.loss, presences=info["presences"], structures=info["structures"])
    seen: dict[str, set[torch.dtype]] = {}
    fields = ("logits", "attention", "masks", "mask_logits", "structure_logits")
    loss_forward, metrics_update, explanation_update = (
        GazeLoss.forward, EvaluationAccumulator.update, ExplanationAccumulator.update)

    def record(name, out):
        seen.setdefault(name, set()).update(getattr(out, f).dtype for f in fields)

    def loss_spy(self, out, *args, **kwargs):
        record("loss", out)
        return loss_forward(self, out, *args, **kwargs)

    def metrics_spy(self, out, *args, **kwargs):
        record("metrics", out)
        return metrics_update(self, out, *args, **kwargs)

    def explanation_spy(self, model_, images, out, *args, **kwargs):
        record("explanation", out)
        return explanation_update(self, model_, images, out, *args, **kwargs)

    monkeypatch.setattr(GazeLoss, "forward", loss_spy)
    monkeypatch.setattr(EvaluationAccumulator, "update", metrics_spy)
    monkeypatch.setattr(ExplanationAccumulator, "update", explanation_spy)
    autocast = runtime.autocast_factory(CPU, "bf16")
    dataset = DermoscopyDataset(pipeline_cache, "val", image_size=cfg.model.image_size)
    loader = DataLoader(dataset, batch_size=4)
    batch = next(iter(loader))

    with torch.no_grad(), autocast():  # the network itself runs in bf16 ...
        raw = model(batch["image"])
    assert raw.logits.dtype == raw.masks.dtype == torch.bfloat16
    assert raw.attention.dtype == torch.float32  # ... but the attention's softmax (Eq. 2) in float32
    torch.testing.assert_close(raw.attention.sum((-2, -1)), torch.ones(4, cfg.model.steps), rtol=0, atol=1e-6)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    terms = train_step(model, loss_fn, optimizer, batch, CPU, autocast=autocast)
    assert terms["loss"].dtype == torch.float32 and torch.isfinite(terms["loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())
    explanation = ExplanationAccumulator(info["structures"], faithfulness=1, loss=cfg.loss)
    result = run_inference(model, loader, device=CPU, structures=info["structures"], loss_fn=loss_fn,
                           autocast=autocast, progress=False, explanation=explanation)
    assert set(seen) == {"loss", "metrics", "explanation"}
    assert seen["loss"] == seen["metrics"] == seen["explanation"] == {torch.float32}
    assert np.isfinite(result.losses["loss"]) and result.explanation["ablation"] is not None


def test_calibrated_probability_of_bf16_logits_is_float32():
    from dermogaze.models.output import GazeOutput

    logits = torch.tensor([[0.5, 2.75], [-1.0, 3.0]], dtype=torch.bfloat16)  # exact in bf16
    p = GazeOutput(logits=logits).calibrated_melanoma_prob(1.5)
    assert p.dtype == torch.float32
    expected = 1.0 / (1.0 + np.exp(-np.array([2.25, 4.0]) / 1.5))  # sigmoid((l1 - l0) / T), by hand
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-6)


def test_viewer_precision_and_bf16_keeps_its_answers(monkeypatch, pipeline_tiny_run, pipeline_cache):
    from dermogaze.apps.serve.session import Viewer

    checkpoint = pipeline_tiny_run / "best.pt"
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: False)
    plain = Viewer(checkpoint, pipeline_cache, device="cpu", amp="bf16")
    assert (plain.amp, plain.precision) == ("off", "float32")  # asked for, not native: float32
    assert Viewer(checkpoint, device="cpu").precision == "float32"  # the default without native bf16
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: True)
    assert Viewer(checkpoint, device="cpu").precision == "bf16 autocast"  # the default with it
    assert Viewer(checkpoint, device="cpu", amp="off").precision == "float32"
    low = Viewer(checkpoint, pipeline_cache, device="cpu", amp="bf16")
    assert (low.amp, low.precision) == ("bf16", "bf16 autocast")

    ref, got = plain.analyse_cached("test", 0), low.analyse_cached("test", 0)
    assert got.state.x_prime.dtype == torch.bfloat16 and ref.state.x_prime.dtype == torch.float32
    assert abs(got.record["melanoma_probability"] - ref.record["melanoma_probability"]) <= MAX_ABS_DP
    np.testing.assert_allclose(got.ablation, ref.ablation, rtol=0, atol=MAX_ABS_DP)
    assert abs(low.intervene(got, [2]) - plain.intervene(ref, [2])) <= MAX_ABS_DP
    assert [s["structure"] for s in got.record["steps"]] == [s["structure"] for s in ref.record["steps"]]
