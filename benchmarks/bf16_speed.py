"""How much faster is bf16 than float32 on the CPU? Training steps, one explanation and the viewer, side by side.

Run by hand from a repository checkout (never timed in tests)::

    nice -n 5 .venv/bin/python benchmarks/bf16_speed.py [--threads 2] [--out benchmarks/results/bf16_speed.md]

One process measures, each pair alternating (fp32, bf16, fp32, bf16, ...) so that both see the same load:

1. **training step** (:func:`dermogaze.training.loop.train_step`: forward, loss, backward, Adam) of
   * the paper's configuration: ``deco_gap_3``, 224 px, batch 8, T = 5, width 1, the encoder frozen, the paper's
     learning rates (``bench_train.py``'s model, batch and optimiser);
   * the demo's: the ``demo`` preset's network (width 0.25, 64 px, T = 4, batch norm on, every part trained at
     its rates), batch 16;
   two copies of the same random weights, one per precision, each with its own optimiser;
2. **explanation** of one image at paper size (:func:`dermogaze.explain.record.explain_image`: the forward pass
   and the record; width 1, T = 5, random weights);
3. **the viewer** at paper width (``dermogaze serve``'s page over a width-1, T = 5 checkpoint of random weights,
   ``bench_serve.py``'s): upload → first full render and each gaze switched off, through ``gradio_client``,
   against one launched app whose viewer runs fp32 and bf16 in turn (:func:`viewer`);
4. **demo training time**: read from ``benchmarks/results/bf16_parity.json`` (its six trainings), when present.

Ratios are fp32 time / bf16 time (the speed-up) for the steps, bf16 / fp32 for the training time. On a CPU
without native bf16 (:func:`dermogaze.runtime.native_cpu_bf16`), dermogaze would run float32 when asked for bf16;
the script makes it autocast anyway, so the bf16 figures are those of PyTorch's emulated bf16 kernels there (the
results file says which). Writes ``--out`` (Markdown) and the same stem ``.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmarks
from bench_serve import free_port, write_checkpoint, write_images  # noqa: E402
from bench_train import _cpu_name, _load_average, _quiet, make_batch, paper_optimizer  # noqa: E402
from dermogaze import runtime  # noqa: E402
from dermogaze.config import LossConfig, load_config  # noqa: E402
from dermogaze.explain.record import explain_image  # noqa: E402
from dermogaze.files import write_json, write_text  # noqa: E402
from dermogaze.losses import GazeLoss  # noqa: E402
from dermogaze.models import build_model  # noqa: E402
from dermogaze.training.loop import train_step  # noqa: E402
from dermogaze.training.optim import build_optimizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CPU = torch.device("cpu")
PRECISIONS = ("off", "bf16")
#: The targets: speed-ups (fp32 / bf16) of the training steps, bf16 seconds of an explanation and of the viewer,
#: and the demo's bf16 / fp32 training time.
TARGETS = {"paper_step": 1.5, "demo_step": 1.8, "explain_s": 0.45, "upload_s": 1.5, "intervention_s": 0.150,
           "demo_training_ratio": 0.55}
PAPER = {"image_size": 224, "batch": 8, "steps": 5, "width": 1.0}


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def alternate(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each ``fns[k]()``, called in turn ``warmup + rounds`` times (the warm-up rounds not kept)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + rounds):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            if r >= warmup:
                times[k].append(time.perf_counter() - start)
    return times


def training_steps(name: str, model: torch.nn.Module, optimizer_of: Callable, loss_fn: GazeLoss,
                   batch: dict[str, Any], rounds: int) -> dict[str, Any]:
    """fp32 against bf16 training steps of copies of ``model`` (see the module docstring)."""
    logging.info("%s training step: fp32 and bf16 alternating, %d rounds", name, rounds)
    nets = {amp: copy.deepcopy(model).train() for amp in PRECISIONS}
    optimizers = {amp: optimizer_of(net) for amp, net in nets.items()}
    fns = {amp: (lambda amp=amp: train_step(nets[amp], loss_fn, optimizers[amp], batch, CPU,
                                            autocast=runtime.autocast_factory(CPU, amp)))
           for amp in PRECISIONS}
    times = alternate(fns, rounds)
    return {"samples": times, "median": {k: _median(v) for k, v in times.items()},
            "speedup": _median(times["off"]) / _median(times["bf16"])}


def paper_model() -> torch.nn.Module:
    torch.manual_seed(0)
    with _quiet("dermogaze.models.gazenet"):
        model = build_model("deco_gap_3", steps=PAPER["steps"], image_size=PAPER["image_size"], width=PAPER["width"])
    return model.freeze_encoder(True)


def explanation(rounds: int) -> dict[str, Any]:
    """Seconds of :func:`explain_image` on one 224 px image, fp32 against bf16."""
    logging.info("explanation of one %d px image: fp32 and bf16 alternating, %d rounds", PAPER["image_size"], rounds)
    model = paper_model().eval()
    image = torch.randn(3, PAPER["image_size"], PAPER["image_size"], generator=torch.Generator().manual_seed(0))
    original = np.zeros((PAPER["image_size"], PAPER["image_size"], 3), dtype=np.uint8)
    fns = {amp: (lambda amp=amp: explain_image(model, image, original, image_id="bench",
                                               autocast=runtime.autocast_factory(CPU, amp)))
           for amp in PRECISIONS}
    times = alternate(fns, rounds)
    return {"samples": times, "median": {k: _median(v) for k, v in times.items()},
            "speedup": _median(times["off"]) / _median(times["bf16"])}


def viewer(rounds: int, work: Path) -> dict[str, Any]:
    """Upload → first render and interventions through ``gradio_client``, fp32 and bf16 in turn.

    One app serves both: its :class:`~dermogaze.apps.serve.Viewer` is switched to the precision of the turn
    (its ``autocast``, which every network pass of an analysis or an intervention enters) before the turn's
    upload, and the turn's interventions run on that upload's state.
    """
    from gradio_client import Client, handle_file

    from dermogaze.apps.serve import Viewer, launch

    steps = PAPER["steps"]
    logging.info("viewer at width %g, T = %d: fp32 and bf16 in turn, %d uploads each", PAPER["width"], steps, rounds)
    checkpoint = write_checkpoint(work / "best.pt", PAPER["width"], steps)
    images = write_images(work, rounds + 1)
    view = Viewer(checkpoint, device="cpu", amp="off")
    autocasts = {amp: runtime.autocast_factory(CPU, amp) for amp in PRECISIONS}
    app = launch(view, port=free_port(), prevent_thread_lock=True, quiet=True)
    upload: dict[str, list[float]] = {amp: [] for amp in PRECISIONS}
    intervention: dict[str, list[float]] = {amp: [] for amp in PRECISIONS}
    try:
        client = Client(app.local_url, verbose=False, download_files=False)
        for k, image in enumerate(images):  # the first round warms up
            for amp in PRECISIONS:
                view.autocast = autocasts[amp]
                start = time.perf_counter()
                client.predict(handle_file(str(image)), api_name="/analyse_upload")
                seconds = [time.perf_counter() - start]
                for off in range(1, steps + 1):  # each gaze switched off in turn
                    start = time.perf_counter()
                    client.predict([t for t in range(1, steps + 1) if t != off], api_name="/intervene")
                    seconds.append(time.perf_counter() - start)
                if k:
                    upload[amp].append(seconds[0])
                    intervention[amp].extend(seconds[1:])
    finally:
        app.close()
    return {"upload": {"samples": upload, "median": {k: _median(v) for k, v in upload.items()}},
            "intervention": {"samples": intervention, "median": {k: _median(v) for k, v in intervention.items()}}}


def demo_training() -> dict[str, Any] | None:
    """The demo's training time, bf16 / fp32, from ``bf16_parity.json`` (None when it was not run)."""
    path = RESULTS / "bf16_parity.json"
    if not path.is_file():
        return None
    parity = json.loads(path.read_text())
    seeds = parity["seeds"]
    return {"bf16": parity["bf16"], "per_seed": {s: r["criteria"]["training time bf16 / fp32"]["value"]
                                                 for s, r in seeds.items()},
            "ratio": parity["verdict"]["time_ratio"],
            "fp32_s": [r["fp32"]["train_s"] for r in seeds.values()],
            "bf16_s": [r["bf16"]["train_s"] for r in seeds.values()]}


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def markdown(r: dict[str, Any]) -> str:
    """The results page."""
    m, t = r["machine"], TARGETS
    kind = r["bf16"]
    lines = [
        "# bf16 against float32 on the CPU: speed",
        "",
        f"Written by `{r['command']}`. Each pair measured alternating in one process (median of the rounds).",
        "",
        f"Machine: {m['cpu']}, {m['threads']} torch threads, torch {m['torch']}; native bf16: "
        f"**{'yes' if kind == 'native' else 'no'}**. Load average before {m['load_before']}, after {m['load_after']}.",
        "",
    ]
    if kind != "native":
        lines += ["This CPU has no native bf16 (AVX-512 BF16 or AMX): dermogaze runs float32 there when asked for "
                  "bf16. The bf16 column is PyTorch's emulated bf16, forced for the measurement: it shows why the "
                  "fallback exists, not what a CPU with native bf16 does.", ""]
    lines += ["| measurement | fp32 | bf16 | fp32 / bf16 | target | met |", "|---|---|---|---|---|---|"]
    for key, label in (("paper_step", "training step, paper configuration (224 px, batch 8, T 5, width 1)"),
                       ("demo_step", "training step, demo (64 px, batch 16, T 4, width 0.25)")):
        s = r[key]
        lines.append(f"| {label} | {s['median']['off']:.3f} s | {s['median']['bf16']:.3f} s | {s['speedup']:.2f}× "
                     f"| ≥ {t[key]}× | {_met(s['speedup'] >= t[key])} |")
    e = r["explain"]
    lines.append(f"| explanation of one 224 px image (`explain_image`) | {e['median']['off']:.3f} s "
                 f"| {e['median']['bf16']:.3f} s | {e['speedup']:.2f}× | bf16 ≤ {t['explain_s']} s "
                 f"| {_met(e['median']['bf16'] <= t['explain_s'])} |")
    v = r.get("viewer")
    if v is not None:
        for key, label, target in (("upload", "viewer: upload → first full render", "upload_s"),
                                   ("intervention", "viewer: intervention", "intervention_s")):
            med = v[key]["median"]
            lines.append(f"| {label} (width 1, T 5, gradio_client) | {med['off'] * 1000:.0f} ms "
                         f"| {med['bf16'] * 1000:.0f} ms | {med['off'] / med['bf16']:.2f}× "
                         f"| bf16 ≤ {t[target] * 1000:.0f} ms | {_met(med['bf16'] <= t[target])} |")
    d = r.get("demo_training")
    if d is not None:
        lines.append(f"| `dermogaze demo` training (bf16_parity.json, {len(d['fp32_s'])} seeds) "
                     f"| {sum(d['fp32_s']):.0f} s | {sum(d['bf16_s']):.0f} s | bf16 / fp32 {d['ratio']:.2f} "
                     f"| ≤ {t['demo_training_ratio']} | {_met(d['ratio'] <= t['demo_training_ratio'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bf16_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of the paper step (default: 3)")
    p.add_argument("--demo-rounds", type=int, default=8, help="timed rounds of the demo step (default: 8)")
    p.add_argument("--explain-rounds", type=int, default=8, help="timed explanations of each (default: 8)")
    p.add_argument("--viewer-rounds", type=int, default=5, help="uploads to each app (default: 5; 0 skips)")
    p.add_argument("--out", type=Path, default=RESULTS / "bf16_speed.md", help="Markdown results (and .json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    load_before = _load_average()
    kind = "native" if runtime.native_cpu_bf16() else "emulated"
    if kind == "emulated":
        runtime.native_cpu_bf16 = lambda: True  # autocast in bf16 all the same (see the module docstring)

    results: dict[str, Any] = {"command": "python benchmarks/bf16_speed.py " + " ".join(argv or sys.argv[1:]),
                               "bf16": kind, "targets": TARGETS}
    model = paper_model()
    results["paper_step"] = training_steps(
        "paper", model, paper_optimizer, GazeLoss(LossConfig()), make_batch(PAPER["batch"], PAPER["image_size"]),
        args.rounds)
    cfg = load_config("demo")
    torch.manual_seed(0)
    demo = build_model(cfg.model.name, steps=cfg.model.steps, image_size=cfg.model.image_size, width=cfg.model.width,
                       batch_norm=cfg.model.batch_norm)
    results["demo_step"] = training_steps(
        "demo", demo, lambda net: build_optimizer(net, cfg), GazeLoss(cfg.loss), make_batch(16, cfg.model.image_size),
        args.demo_rounds)
    results["explain"] = explanation(args.explain_rounds)
    if args.viewer_rounds:
        with tempfile.TemporaryDirectory(prefix="bf16-speed-") as work:
            results["viewer"] = viewer(args.viewer_rounds, Path(work))
    results["demo_training"] = demo_training()
    results["machine"] = {"cpu": _cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "load_before": load_before, "load_after": _load_average()}
    text = markdown(results)
    write_json(results, args.out.with_suffix(".json"))
    write_text(text, args.out)
    print(text)
    print(f"written to {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
