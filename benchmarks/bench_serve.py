"""Viewer speed: ``dermogaze serve`` timed through ``gradio_client`` against a launched app.

Run by hand (never timed in tests)::

    .venv/bin/python benchmarks/bench_serve.py [--width 0.25] [--steps 4] [--repeats 10] [--out FILE.md]

The model is ``deco_gap_3`` at the paper's 224 px input with random weights (speed does not depend
on their values), ``--width`` (0.25: the demo's network; 1: the paper's) and ``--steps`` gazes.
Each upload is a new photo-like 1024×768 JPEG (quality 90), so nothing is served from a cache.

Measured, each side by side in one process against one launched app:

1. **upload → first full render**: ``/analyse_upload``: the upload, the analysis (one forward pass
   and the per-gaze ablation) and the drawing of every gaze's views (sent inline with the answer).
2. **intervention** (``/intervene``, the diagnosis branch on the kept network state), cycling
   through each gaze switched off. A step change has no endpoint: it runs in the browser (see 6).
3. **4 concurrent users**: four clients (four sessions) upload at the same moment; the time each
   waits for its render (the network runs one request at a time).
4. **floor**: the same client's round trip to a no-op endpoint (not queued, like the
   intervention event) of a second Gradio app in the same process: what Gradio and
   ``gradio_client`` cost on their own.
5. **in-process**: the same handlers' work without HTTP (``Viewer.analyse_file`` and the drawing
   of all gazes' views, that drawing alone, ``Viewer.intervene``).
6. **in Chromium** (when ``/usr/bin/chromium`` exists; Playwright, headless): what a user sees.
   Upload and intervention: from the input (file chosen, gaze unticked) until the page shows the
   new text and its pictures have loaded (Playwright polls once per animation frame, ~16 ms). Step
   change: timed inside the page with ``performance.now()``, from the first ``input``/``keydown``
   event of the step number's field until the next animation frame after gaze ``t``'s panel is
   shown (a ``MutationObserver`` sees it; the frame is the one that paints it).

The load average (``os.getloadavg``) is recorded before and after: on a shared machine it says how
many other processes competed for the cores.
"""

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_data, beside this script
from bench_data import photo_like  # noqa: E402
from dermogaze.apps.serve import Viewer, launch  # noqa: E402
from dermogaze.apps.serve.page import gazes_html, path_html  # noqa: E402
from dermogaze.config import load_config  # noqa: E402
from dermogaze.files import write_text  # noqa: E402
from dermogaze.models import build_model  # noqa: E402
from dermogaze.training.checkpoint import checkpoint_state, save_checkpoint  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
#: The issue's targets, in seconds.
TARGETS = {"upload": 1.0, "step": 0.050, "intervention": 0.100, "concurrent": 4.0}
IMAGE_SIZE = 224
USERS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_checkpoint(path: Path, width: float, steps: int) -> Path:
    """A ``deco_gap_3`` checkpoint at 224 px with random weights (every key a real checkpoint has)."""
    cfg = load_config("demo", [f"model.image_size={IMAGE_SIZE}", f"model.width={width}", f"model.steps={steps}"])
    torch.manual_seed(0)
    model = build_model(cfg.model.name, steps=steps, image_size=IMAGE_SIZE, width=width, batch_norm="on").eval()
    structures = [f"structure_{k + 1}" for k in range(model.decoder.classifier.fc2.out_features)]  # names: no speed
    info = {"mean": [0.7, 0.55, 0.5], "std": [0.15, 0.15, 0.15], "structures": structures, "size": 256}
    state = checkpoint_state(
        cfg, model, torch.optim.SGD(model.parameters(), lr=0.1), torch.amp.GradScaler("cpu", enabled=False), info,
        epoch=1, best_val=None, best_epoch=1, rngs=[], metrics={},
        calibration={"temperature": 1.0, "threshold": 0.5, "threshold_rule": "0.5"},
    )
    return save_checkpoint(path, state)


def write_images(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        path = folder / f"lesion_{k:02d}.jpg"
        Image.fromarray(photo_like(rng, 1024, 768)).save(path, quality=90)
        paths.append(path)
    return paths


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "worst": max(values), "n": len(values)}


#: Arms the in-page step timer for gaze ``t``: start at the step field's first input/keydown event, stop at the
#: animation frame after gaze t's panel is shown; the result (ms) lands in ``window.__dgStep``.
_ARM_STEP_TIMER = """(t) => {
  window.__dgStep = null;
  let start = null;
  const field = document.querySelector('#dg-step input[type=number]');
  const begin = () => { if (start === null) start = performance.now(); };
  field.addEventListener('input', begin, {capture: true, once: true});
  field.addEventListener('keydown', begin, {capture: true, once: true});
  const gazes = document.querySelector('#dg-gazes');
  const shown = () => [...gazes.querySelectorAll('.dg-panel')].some(p => !p.hidden && p.dataset.dgStep === String(t));
  const observer = new MutationObserver(() => {
    if (start !== null && shown()) {
      observer.disconnect();
      requestAnimationFrame(() => { window.__dgStep = performance.now() - start; });
    }
  });
  observer.observe(gazes, {subtree: true, attributes: true, attributeFilter: ['hidden']});
}"""

#: True once every picture of the page has loaded (none still on its way).
_PICTURES_LOADED = "() => [...document.querySelectorAll('img')].every(i => i.complete)"


def browser_times(url: str, images: list[Path], steps: int) -> dict[str, list[float]]:
    """Upload, step and intervention latencies as a user sees them in Chromium (see the module docstring)."""
    from playwright.sync_api import sync_playwright

    times: dict[str, list[float]] = {"upload": [], "step": [], "intervention": []}
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        number = page.locator("#dg-step input[type=number]")
        for k, image in enumerate(images):
            start = time.perf_counter()
            page.set_input_files("#dg-upload input[type=file]", str(image))
            page.wait_for_function(f"() => document.querySelector('#dg-diagnosis')?.innerText.includes("
                                   f"'{image.stem}') && ({_PICTURES_LOADED})()", timeout=60_000)
            if k:  # the first upload warms the page up
                times["upload"].append(time.perf_counter() - start)
            for t in [*range(2, steps + 1), 1]:
                page.evaluate(_ARM_STEP_TIMER, t)
                number.fill(str(t))
                number.press("Enter")
                page.wait_for_function("() => window.__dgStep !== null", timeout=30_000)
                text = page.evaluate("() => [...document.querySelectorAll('#dg-gazes .dg-panel')]"
                                     ".filter(p => !p.hidden).map(p => p.innerText).join('|')")
                assert text.startswith(f"Gaze {t} of {steps}"), text[:80]  # the right gaze, alone
                times["step"].append(page.evaluate("() => window.__dgStep") / 1000)
            for t in range(1, steps + 1):
                for expected in (f"Without gaze {t}:", "All gazes used"):
                    start = time.perf_counter()
                    page.locator("#dg-keep label", has_text=f"gaze {t}:").click()
                    page.wait_for_function(f"() => document.querySelector('#dg-effect')?.innerText.startsWith("
                                           f"'{expected}')", timeout=30_000)
                    times["intervention"].append(time.perf_counter() - start)
        browser.close()
    return times


def run(width: float, steps: int, repeats: int, work: Path) -> dict:
    import gradio as gr
    from gradio_client import Client, handle_file

    checkpoint = write_checkpoint(work / "best.pt", width, steps)
    images = write_images(work, repeats + USERS + 1)
    viewer = Viewer(checkpoint, device="cpu")
    app = launch(viewer, port=free_port(), prevent_thread_lock=True, quiet=True)
    with gr.Blocks(analytics_enabled=False) as noop_app:  # the page's step and intervention events are unqueued too
        a, b = gr.Number(), gr.Number()
        a.change(lambda x: x, a, b, api_name="noop", queue=False, show_progress="hidden")
    noop_app.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    load_before = os.getloadavg()
    try:
        client = Client(app.local_url, verbose=False, download_files=False)
        client.predict(handle_file(str(images[-1])), api_name="/analyse_upload")  # warm-up: first-call costs
        upload, intervene = [], []
        for k in range(repeats):
            upload.append(timed(lambda k=k: client.predict(handle_file(str(images[k])), api_name="/analyse_upload")))
            for off in range(1, steps + 1):
                keep = [t for t in range(1, steps + 1) if t != off]
                intervene.append(timed(lambda keep=keep: client.predict(keep, api_name="/intervene")))
            intervene.append(timed(lambda: client.predict(list(range(1, steps + 1)), api_name="/intervene")))

        noop_client = Client(noop_app.local_url, verbose=False)
        noop_client.predict(0, api_name="/noop")
        floor = [timed(lambda k=k: noop_client.predict(k, api_name="/noop")) for k in range(20)]

        users = [Client(app.local_url, verbose=False, download_files=False) for _ in range(USERS)]
        barrier = threading.Barrier(USERS)
        waits = [0.0] * USERS

        def user(k: int) -> None:
            barrier.wait()
            waits[k] = timed(lambda: users[k].predict(handle_file(str(images[repeats + k])),
                                                      api_name="/analyse_upload"))

        threads = [threading.Thread(target=user, args=(k,)) for k in range(USERS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()

        def first_render(path: Path) -> None:
            analysis = viewer.analyse_file(path)
            path_html(analysis), gazes_html(analysis)

        def draw_gazes() -> None:
            path_html(analysis), gazes_html(analysis)

        browser = browser_times(app.local_url, images[: repeats + 1], steps) if CHROMIUM.is_file() else None

        analysis = viewer.analyse_file(images[0])
        gazes = list(range(1, steps + 1))
        in_process = {
            "analysis and first drawing": [timed(lambda k=k: first_render(images[k])) for k in range(repeats)],
            f"drawing all {steps} gazes' views (part of the first)": [timed(draw_gazes) for _ in range(repeats)],
            "intervention": [timed(lambda t=t: viewer.intervene(analysis, [u for u in gazes if u != t]))
                             for t in gazes * repeats],
        }
    finally:
        app.close()
        noop_app.close()
    return {
        "width": width, "steps": steps, "repeats": repeats, "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "client": {"upload": summary(upload), "intervention": summary(intervene),
                   "concurrent": summary(waits), "floor": summary(floor)},
        "concurrent_each": waits,
        "in_process": {k: summary(v) for k, v in in_process.items()},
        "browser": None if browser is None else {k: summary(v) for k, v in browser.items()},
    }


def report(results: list[dict]) -> str:
    ms = lambda s: f"{1000 * s:.0f} ms"  # noqa: E731
    lines = ["# `dermogaze serve`: speed of the viewer", "",
             "Measured by `benchmarks/bench_serve.py` through `gradio_client` against a launched app on this "
             "machine's CPU, the 224 px input of the paper, random weights. Wall-clock times, median and worst of "
             "the repeats. The machine was shared: the load average (1, 5, 15 min) before and after each run says "
             "how many other processes competed for its cores.", ""]
    for r in results:
        c, p = r["client"], r["in_process"]
        lines += [
            f"## deco_gap_3, width {r['width']:g}, T = {r['steps']}, 224 px ({r['repeats']} repeats, "
            f"{r['cpus']} cores, torch threads {r['threads']})", "",
            f"Load average before {r['load_before']}, after {r['load_after']}.", "",
            "| through gradio_client | median | worst | target | met (median) |",
            "|---|---|---|---|---|",
        ]
        for key, name in (("upload", "upload → first full render (every gaze's views)"),
                          ("intervention", "intervention"), ("concurrent", f"{USERS} users at once, each")):
            s = c[key]
            met = "yes" if s["median"] <= TARGETS[key] else "**no**"
            lines.append(f"| {name} | {ms(s['median'])} | {ms(s['worst'])} | ≤ {ms(TARGETS[key])} | {met} |")
        f = c["floor"]
        lines += [f"| no-op endpoint (Gradio + client floor) | {ms(f['median'])} | {ms(f['worst'])} | | |", "",
                  "| the same work in-process (no HTTP) | median | worst |", "|---|---|---|"]
        lines += [f"| {name} | {ms(s['median'])} | {ms(s['worst'])} |" for name, s in p.items()]
        if r["browser"] is not None:
            lines += ["", "| in Chromium, as a user sees it | median | worst | target | met (median) |",
                      "|---|---|---|---|---|"]
            for key, name in (("upload", "upload → page shown"), ("step", "step change (in the page, no request)"),
                              ("intervention", "intervention")):
                s = r["browser"][key]
                met = "yes" if s["median"] <= TARGETS[key] else "**no**"
                lines.append(f"| {name} | {ms(s['median'])} | {ms(s['worst'])} | ≤ {ms(TARGETS[key])} | {met} |")
        lines += ["", "A step change sends no request (every gaze's views came with the upload; the page switches "
                  f"panels). Ratios: an intervention costs {c['intervention']['median'] / f['median']:.2f}× the no-op "
                  "round trip; the upload's in-process work "
                  f"is {p['analysis and first drawing']['median'] / c['upload']['median']:.0%} of its round trip. "
                  f"The {USERS} concurrent users waited " + ", ".join(ms(w) for w in sorted(r["concurrent_each"]))
                  + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, action="append", help="network width (repeatable; default 0.25)")
    parser.add_argument("--steps", type=int, default=4, help="T, gazes (default 4, the demo's)")
    parser.add_argument("--repeats", type=int, default=10, help="uploads timed (default 10)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve.md")
    args = parser.parse_args(argv)
    results = []
    for width in args.width or [0.25]:
        with tempfile.TemporaryDirectory(prefix="bench_serve_") as work:
            results.append(run(width, args.steps, args.repeats, Path(work)))
    text = report(results)
    write_text(text, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
