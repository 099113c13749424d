"""The viewer's page: HTML and Markdown fragments of an analysis, the Gradio page (:func:`build_app`), :func:`launch`.

Every gaze's views (path with that gaze ringed, attention, mask, ground truth, its text) are sent
with the first render as HTML panels, one per gaze, pictures inlined as JPEG data URLs
(:func:`gazes_html`, :func:`path_html`). A step change is then no request at all: the slider's
change event runs a line of JavaScript in the browser that shows gaze ``t``'s panels and hides the
others (:data:`_SHOW_STEP_JS`). Gradio is imported only by :func:`build_app`.

What a request may do, and what the server keeps, is bounded at four places:

* **the HTTP boundary** (:mod:`.guard`): bodies above :data:`MAX_UPLOAD_BYTES` (an upload) or
  :data:`MAX_REQUEST_BYTES` (the API's JSON) are refused with 413 before they are read; an unknown
  ``fn_index`` or API name is a 404 listing the endpoints;
* **from a request to a handler's arguments** (:func:`build_app`'s page class): a request whose values do not
  fit an endpoint's inputs (their number, an upload that is not an uploaded file) is one ``gr.Error`` naming
  the endpoint and what it takes; the values a user chooses (gaze numbers, split names, gallery indices) reach
  the handlers unconverted (``preprocess=False``) and are checked there, every
  :class:`~dermogaze.errors.DermogazeError` becoming a ``gr.Error`` with its message (an upload's own
  problems, a file that is not an image..., are shown in the page's status line instead);
* **what the server holds**: the analyses of the :data:`MAX_SESSIONS` most recently used sessions (Gradio's
  ``state_session_capacity``; a dropped session is told to upload again), their full-size images within
  :data:`~.session.ORIGINALS_BYTES` (:class:`~.session._Originals`), one network request at a time
  (``default_concurrency_limit=1``) with at most :data:`MAX_QUEUED` waiting (then 503), uploads and served
  files deleted :data:`FILE_LIFETIME_S` seconds after they were written (Gradio's ``delete_cache``);
* **its files**: all in the viewer's folder (:class:`~.workspace.ServerFolder`, Gradio's through
  ``GRADIO_TEMP_DIR``), which is removed when the server stops: Ctrl-C, and SIGTERM or SIGHUP, which
  :func:`launch` turns into Ctrl-C.
"""

import base64
import contextlib
import html
import logging
import os
import re
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ...config import DEFAULT_HOST, DEFAULT_PORT
from ...data.provenance import DEMONSTRATION_NOTE
from ...errors import DermogazeError
from .drawing import render_path, render_step
from .guard import RequestLimit, request_error_handlers
from .session import GALLERY_SIZE, Analysis, Viewer, gaze_numbers, jpeg_bytes

logger = logging.getLogger(__name__)

#: Bytes of one uploaded file (Gradio's ``max_file_size``; a 30-megapixel dermoscopy JPEG is well under it).
MAX_UPLOAD_BYTES = 64 << 20
#: Bytes of any other request's body (the API's JSON: gaze numbers, a split name, an uploaded file's path).
MAX_REQUEST_BYTES = 1 << 20
#: Sessions (browser tabs, API clients) whose state the server keeps; the least recently used goes beyond it.
MAX_SESSIONS = 128
#: Requests waiting for the network beyond which a new one is refused (HTTP 503, "Queue is full").
MAX_QUEUED = 64
#: Seconds an uploaded file, or a copy of a file the page serves, is kept (checked every minute).
FILE_LIFETIME_S = 600
#: Starts of the web server tried before giving up: Gradio gives its server thread 5 s, which a busy machine misses.
START_ATTEMPTS = 3


# ----------------------------------------------------------------------------------------------
# Text (HTML and Markdown fragments)
# ----------------------------------------------------------------------------------------------


def structure_label(name: str | None) -> str:
    """``pigment_network`` → ``pigment network``, ``milia_like_cyst`` → ``milia-like cyst``; None → an em dash."""
    return "—" if name is None else str(name).replace("_like_", "-like ").replace("_", " ")


def _cell(value: Any, spec: str = ".2f") -> str:
    """A number of the page's table in ``spec`` (e.g. ``+.3f``, ``.0%``); an em dash when it is missing.

    Not :func:`~dermogaze.evaluation.tables.format_value` (``n/a``, fixed decimals): the page marks a missing
    value as :func:`structure_label` does, and signs and percentages need a format spec.
    """
    return "—" if value is None else format(value, spec)


def diagnosis_html(analysis: Analysis, rule: str = "") -> str:
    """The diagnosis box: P(melanoma), the decision at the threshold, and the ground truth when known."""
    rec = analysis.record
    p, threshold, decision = rec["melanoma_probability"], rec["threshold"], rec["prediction"]
    how = f", rule {rule}" if rule else ""
    lines = [
        f'<div class="dg-prob">P(melanoma) = <b id="dg-probability">{p:.3f}</b></div>',
        f'<div class="dg-decision">Decision: <b>{decision}</b> '
        f"<span class='dg-small'>(melanoma when P ≥ {threshold:.3f}; threshold chosen on the validation "
        f"images{how})</span></div>",
    ]
    gt = rec.get("ground_truth")
    if gt:
        verdict = "the decision is right ✓" if gt["prediction_correct"] else "the decision is wrong ✗"
        lines.append(f'<div class="dg-gt">Ground truth: <b>{gt["diagnosis"]}</b> — {verdict}</div>')
    else:
        lines.append('<div class="dg-gt dg-small">Ground truth: not known for an uploaded image</div>')
    lines.append(f'<div class="dg-small">Image: {html.escape(rec["image_id"])} ({rec["image_size"]["width"]}×'
                 f'{rec["image_size"]["height"]} px)</div>')
    lines.append(f'<div class="dg-ood dg-small">{html.escape(ood_text(rec.get("ood")), quote=False)}</div>')
    lines += [f'<div class="dg-note"><b>{html.escape(note, quote=False)}</b></div>' for note in rec.get("notes") or ()]
    return f'<div class="dg-diagnosis dg-{decision}">' + "".join(lines) + "</div>"


def ood_text(ood: dict[str, Any] | None) -> str:
    """The out-of-distribution score of an analysis in words (the record's ``ood``, :mod:`dermogaze.metrics.ood`)."""
    if ood is None:
        return "Out-of-distribution score: not available (this checkpoint has no fitted feature distribution)."
    verdict = ("out of distribution: unlike the training images" if ood["out_of_distribution"]
               else "within the training images' distribution")
    return (f"Out-of-distribution score: distance {ood['distance']:.2f} to the training images' features, threshold "
            f"{ood['threshold']:.2f} (95% of the validation images lie within it): {verdict}.")


def step_markdown(analysis: Analysis, t: int) -> str:
    """What gaze ``t`` (1-based) found, as a short list, with its metrics where the record has them."""
    step = analysis.record["steps"][t - 1]
    lines = [f"**Gaze {t} of {analysis.steps}** looked at pixel (x {step['gaze']['x']}, y {step['gaze']['y']}), "
             f"{step['attention_vs_uniform']:.1f}× as hard as a uniform look."]
    if step["structure"] is not None:
        lines.append(f"- It names **{structure_label(step['structure'])}** (probability "
                     f"{step['structure_probability']:.2f}) and outlines {step['mask_area_fraction']:.0%} of what the "
                     "network sees.")
    if step.get("gt_structure") is not None:
        mark = "✓ the same" if step["structure_correct"] else "✗ another structure"
        lines.append(f"- Ground truth there: **{structure_label(step['gt_structure'])}** ({mark}).")
    metrics = []
    if step.get("pointing_hit") is not None:  # on the loss's matched structure, which may differ from the one above
        where = "inside" if step["pointing_hit"] else "outside"
        metrics.append(f"pointing game **{'hit' if step['pointing_hit'] else 'miss'}** on its matched structure, "
                       f"**{structure_label(step['matched_structure'])}** (the attention peak lies {where} that "
                       "structure's ground-truth mask)")
    if step.get("relevance_mass") is not None:
        metrics.append(f"relevance mass **{step['relevance_mass']:.2f}** (the share of the attention inside it)")
    if metrics:
        lines.append("- " + "; ".join(metrics).capitalize() + ".")
    if analysis.ablation is not None:
        delta = analysis.ablation[t - 1] - analysis.record["melanoma_probability"]
        lines.append(f"- Without this gaze alone, P(melanoma) would be {analysis.ablation[t - 1]:.3f} "
                     f"(ΔP {delta:+.3f}).")
    return "\n".join(lines)


def _inline_html(markdown: str) -> str:
    """The little markdown of :func:`step_markdown` (``**bold**``, ``- `` items) as HTML, text escaped."""
    bold = lambda line: re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(line, quote=False))  # noqa: E731
    lines = markdown.splitlines()
    head = [f"<p>{bold(x)}</p>" for x in lines if not x.startswith("- ")]
    items = [f"<li>{bold(x[2:])}</li>" for x in lines if x.startswith("- ")]
    return "".join(head) + (f"<ul>{''.join(items)}</ul>" if items else "")


def _data_url(array: np.ndarray) -> str:
    """A picture as an inline JPEG (:func:`~.session.jpeg_bytes`): no file, no request to fetch it."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(array)).decode("ascii")


def _figure(array: np.ndarray, caption: str, cls: str) -> str:
    return (f'<figure class="dg-fig {cls}"><figcaption>{html.escape(caption)}</figcaption>'
            f'<img src="{_data_url(array)}" alt="{html.escape(caption)}"></figure>')


def _panel(t: int, body: str) -> str:
    """Panel of gaze ``t``: shown for t = 1, hidden otherwise (the slider's JavaScript switches them)."""
    hidden = "" if t == 1 else " hidden"
    return f'<div class="dg-panel" data-dg-step="{t}"{hidden}>{body}</div>'


def path_html(analysis: Analysis) -> str:
    """The gaze path, one picture per gaze (that gaze ringed), of which the current gaze's is shown."""
    if not analysis.has_gazes or analysis.steps == 0:
        return _figure(render_path(analysis), "The image (this model has no gazes)", "dg-path")
    return "".join(_panel(t, _figure(render_path(analysis, t), f"Gaze path (numbered in order; gaze {t} ringed)",
                                     "dg-path")) for t in range(1, analysis.steps + 1))


def gazes_html(analysis: Analysis) -> str:
    """All ``T`` gazes' panels (text with the step's metrics, attention, mask, ground truth), gaze 1 shown."""
    if not analysis.has_gazes:
        return ""
    panels = []
    for t in range(1, analysis.steps + 1):
        att, mask, gt = render_step(analysis, t)
        figures = [_figure(att, "Where it looked (attention)", "dg-attention")]
        if mask is not None:
            figures.append(_figure(mask, "What it outlined (its mask)", "dg-mask"))
        if gt is not None:
            figures.append(_figure(gt, "Ground truth mask", "dg-gt"))
        panels.append(_panel(t, f'<div class="dg-step-text">{_inline_html(step_markdown(analysis, t))}</div>'
                                f'<div class="dg-figs">{"".join(figures)}</div>'))
    return "".join(panels)


#: The step slider's change event, run in the browser: show the panels of gaze ``t``, hide the others.
_SHOW_STEP_JS = """(t) => {
  const s = String(Math.round(t));
  document.querySelectorAll('[data-dg-step]').forEach((e) => { e.hidden = e.dataset.dgStep !== s; });
  return [];
}"""


def path_legend_markdown(analysis: Analysis) -> str:
    """The key to the gaze path's marks (what applies to this image)."""
    parts = ["Discs: the gazes in order, arrows from each to the next; ringed: the gaze shown below."]
    if any(s.get("structure_correct") is not None for s in analysis.record["steps"]):
        parts.append("Green: the structure named is the ground truth's; red: it is not.")
    if tuple(analysis.explanation.region) != (0.0, 0.0, 1.0, 1.0):
        parts.append("Dashed: the part of the image the network sees.")
    return '<span class="dg-small">' + " ".join(parts) + "</span>"


#: Columns of the table of steps.
TABLE_HEADERS = ["gaze", "structure named", "its probability", "ΔP without it", "attention peak ×uniform",
                 "mask area", "ground truth", "pointing game (matched structure)", "relevance mass"]


def steps_table(analysis: Analysis) -> list[list[Any]]:
    """One row per gaze (:data:`TABLE_HEADERS`)."""
    rec = analysis.record
    rows = []
    for k, s in enumerate(rec["steps"]):
        delta = None if analysis.ablation is None else analysis.ablation[k] - rec["melanoma_probability"]
        gt = structure_label(s.get("gt_structure")) if s.get("gt_structure") is not None else "—"
        if s.get("structure_correct") is not None:
            gt += " ✓" if s["structure_correct"] else " ✗"
        hit = s.get("pointing_hit")
        rows.append([
            k + 1, structure_label(s["structure"]), _cell(s["structure_probability"]), _cell(delta, "+.3f"),
            _cell(s["attention_vs_uniform"], ".1f"), _cell(s["mask_area_fraction"], ".0%"), gt,
            "—" if hit is None else f"{'hit' if hit else 'miss'} ({structure_label(s['matched_structure'])})",
            _cell(s.get("relevance_mass")),
        ])
    return rows


def intervention_markdown(analysis: Analysis, keep: Sequence[int], p: float) -> str:
    """The recomputed diagnosis, in words, against the one with every gaze."""
    rec = analysis.record
    full, threshold = rec["melanoma_probability"], rec["threshold"]
    off = [t for t in range(1, analysis.steps + 1) if t not in set(keep)]
    decision = "melanoma" if p >= threshold else "benign"
    if not off:
        return f"All gazes used: P(melanoma) = {full:.3f} → {rec['prediction']}. Untick a gaze to remove it."
    flip = " — **the decision changes**" if decision != rec["prediction"] else " — the decision stays"
    return (f"Without gaze{'s' if len(off) > 1 else ''} {', '.join(map(str, off))}: P(melanoma) = **{p:.3f}** → "
            f"{decision} (ΔP = **{p - full:+.3f}** against {full:.3f} with all gazes){flip}.")


# ----------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------

_CSS = """
.dg-diagnosis {padding: 12px 16px; border-radius: 8px; border: 2px solid #999; font-size: 1.05em}
.dg-diagnosis.dg-melanoma {border-color: #d73027; background: #fdecea}
.dg-diagnosis.dg-benign {border-color: #1a9850; background: #eaf6ee}
.dg-prob {font-size: 1.6em}
.dg-small {font-size: 0.85em; color: #555}
#dg-status p {margin: 0}
.dg-error {color: #b00020; font-weight: 600}
.dg-warn {color: #8a5a00}
.dg-note {color: #8a5a00; margin-top: 6px}
.dg-panel[hidden] {display: none !important}
.dg-figs {display: flex; flex-wrap: wrap; gap: 12px}
.dg-fig {margin: 0; flex: 1 1 280px; max-width: 384px}
.dg-fig figcaption {font-size: 0.9em; color: #444; margin-bottom: 4px}
.dg-fig img {width: 100%; height: auto; display: block; border-radius: 4px}
.dg-fig.dg-path {max-width: 520px}
.dg-step-text {font-size: 1.02em; margin-bottom: 8px}
.dg-step-text ul {margin: 4px 0 0 1.2em}
"""

_INTRO = """\
# dermogaze — how the network reached its diagnosis

The network looks at a dermoscopic image in **{steps} successive gazes**. At each gaze it attends to
one region (bright = where it looked), outlines a dermoscopic structure there and names it; the
diagnosis is computed from what the gazes saw. Walk through the gazes with the slider, and untick
gazes to see how the diagnosis changes without them. *Research software, not a medical device.*

Model: `{variant}`, {size}×{size} px input, checkpoint `{checkpoint}`, computed in {precision} on {device}.
Trained on: {trained_on}.{demonstration}
"""


def intro_markdown(viewer: Viewer) -> str:
    """The page's introduction: what the page shows, the model, and what it was trained on."""
    demonstration = ""
    if viewer.training_data.get("kind") == "synthetic":  # the line each result of a photograph shows
        demonstration = f" **{DEMONSTRATION_NOTE[0].upper()}{DEMONSTRATION_NOTE[1:]}** when it is given a photograph."
    return _INTRO.format(steps=viewer.steps or "no", variant=viewer.variant, size=viewer.image_size,
                         checkpoint=viewer.checkpoint, precision=viewer.precision, device=viewer.device,
                         trained_on=viewer.trained_on, demonstration=demonstration)


_STEP_LEGEND = (
    "Attention: brighter = looked harder, on one colour scale for all the gazes of the image. Mask: where the network "
    "places the structure it names (filled by its probability, outlined at 50%). Ground truth: the annotated mask "
    "that the gaze's mask overlaps most. The pointing game and the relevance mass are those of the structure the "
    "training loss's matching gives the gaze (each structure to one gaze), which may be another."
)


def _status(kind: str, text: str) -> str:
    """A message of the status line (``error`` or ``warn``); its text (file names...) is escaped."""
    return f'<span class="dg-{kind}">{html.escape(text)}</span>' if text else ""


def build_app(viewer: Viewer):
    """The Gradio page over ``viewer`` (see the module docstring); returns an unlaunched ``gr.Blocks``."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before Gradio is first imported: no telemetry thread
    try:
        import gradio as gr
    except ImportError:
        raise DermogazeError(
            "dermogaze serve needs Gradio, which is not installed: pip install 'dermogaze[serve]'"
        ) from None

    steps = viewer.steps
    intro = intro_markdown(viewer)
    with _page_class(gr)(title="dermogaze viewer", analytics_enabled=False, delete_cache=(60, FILE_LIFETIME_S)) as app:
        analysis_state = gr.State(None)
        gr.Markdown(intro)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                gr.Markdown("### 1 · Choose an image")
                with gr.Tabs():
                    with gr.Tab("Upload an image"):
                        upload = gr.File(label="Dermoscopic image (JPEG or PNG), dropped here or chosen",
                                         type="filepath", elem_id="dg-upload", height=150)
                    if viewer.splits:
                        with gr.Tab("Images with ground truth"):
                            split = gr.Dropdown(viewer.splits, value=viewer.splits[0], label="Split of the data")
                            gallery = gr.Gallery(viewer.gallery(viewer.splits[0]), columns=3, height=360,
                                                 allow_preview=False, elem_id="dg-gallery",
                                                 label=f"Click an image (the first {GALLERY_SIZE} of the split)")
                status = gr.HTML("", elem_id="dg-status")
            with gr.Column(scale=3, min_width=320, visible=False) as top:
                gr.Markdown("### 2 · Diagnosis")
                diagnosis = gr.HTML("", elem_id="dg-diagnosis")
                path_view = gr.HTML("", elem_id="dg-path-view")
                path_legend = gr.Markdown("", elem_id="dg-path-legend")
        with gr.Column(visible=False) as details:
            with gr.Column(visible=steps > 0):
                gr.Markdown("### 3 · The gazes, one by one")
                step = gr.Slider(1, max(steps, 2), value=1, step=1, label="Gaze (drag, or type its number)",
                                 elem_id="dg-step", interactive=steps > 1)
                gazes_view = gr.HTML("", elem_id="dg-gazes")
                gr.Markdown(_STEP_LEGEND, elem_classes="dg-small")
                gr.Markdown("### 4 · What if the network had not looked there?")
                with gr.Row(equal_height=True):
                    keep = gr.CheckboxGroup(choices=[(f"gaze {t}", t) for t in range(1, steps + 1)],
                                            value=list(range(1, steps + 1)), elem_id="dg-keep", scale=3,
                                            label="Gazes the diagnosis may use (untick to remove one)")
                    p_keep = gr.Number(label="P(melanoma) from the ticked gazes", precision=3, interactive=False,
                                       elem_id="dg-p-keep", scale=1)
                effect = gr.Markdown("", elem_id="dg-effect")
            gr.Markdown("### 5 · All gazes")
            table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, elem_id="dg-table", wrap=True,
                                 show_label=False)
            gr.Markdown("### Download")
            download = gr.Button("Prepare the JSON record and the figures of dermogaze explain", size="sm",
                                 elem_id="dg-download")
            files = gr.File(label="Files", file_count="multiple", interactive=False, elem_id="dg-files",
                            visible=False)
            with gr.Accordion("JSON record (as written by dermogaze explain)", open=False):
                record_json = gr.JSON(elem_id="dg-record")

        analysis_outputs = [analysis_state, status, top, details, diagnosis, path_view, path_legend, step, gazes_view,
                            table, keep, p_keep, effect, record_json, files]

        def show(analysis: Analysis) -> tuple:
            t_steps = analysis.steps if analysis.has_gazes else 0
            notes = " ".join(_status("warn", n) for n in analysis.notes)
            ticked = list(range(1, t_steps + 1))
            keep_update = gr.update(choices=[(f"gaze {t}: {structure_label(s['structure'])}", t) for t, s in
                                             zip(ticked, analysis.record["steps"], strict=True)], value=ticked)
            p = analysis.record["melanoma_probability"]
            return (analysis, notes, gr.update(visible=True), gr.update(visible=True),
                    diagnosis_html(analysis, viewer.threshold_rule), path_html(analysis),
                    path_legend_markdown(analysis), gr.update(value=1), gazes_html(analysis), steps_table(analysis),
                    keep_update, p,
                    intervention_markdown(analysis, ticked, p), analysis.record, gr.update(value=None, visible=False))

        def refuse(message: str) -> tuple:
            return (None, _status("error", message), gr.update(visible=False), gr.update(visible=False), "", "", "",
                    gr.update(value=1), "", [], gr.update(), None, "", None, gr.update(value=None, visible=False))

        def analyse_upload(path: str | None):
            """The analysis, and the upload field emptied: ready for the next image (the diagnosis names this one)."""
            if not path:
                return *refuse("No file was uploaded."), None
            try:
                return *show(viewer.analyse_file(path)), None
            except DermogazeError as exc:  # DataError included: a bad file, named
                return *refuse(str(exc)), None

        def analyse_pick(split_name: Any, evt: gr.EventData):
            index = evt._data.get("index") if isinstance(evt._data, dict) else None  # the gallery image clicked
            try:
                return show(viewer.analyse_cached(split_name, index))
            except DermogazeError as exc:
                return refuse(str(exc))

        @contextlib.contextmanager
        def refusals() -> Iterator[None]:
            """A DermogazeError of the block becomes a ``gr.Error`` with its message (no traceback in the log)."""
            try:
                yield
            except DermogazeError as exc:
                raise gr.Error(str(exc), print_exception=False) from None

        def analysed(analysis: Analysis | None) -> Analysis:
            if analysis is None:
                raise DermogazeError(_NO_ANALYSIS)
            return analysis

        def intervene(analysis: Analysis | None, ticked: Any):
            with refusals():
                analysis = analysed(analysis)
                keep = gaze_numbers(ticked, analysis.steps)
                p = viewer.intervene(analysis, keep)
            return p, intervention_markdown(analysis, keep, p)

        def prepare_files(analysis: Analysis | None):
            with refusals():
                files = viewer.save_files(analysed(analysis))
            return gr.update(value=[str(p) for p in files], visible=True)

        def pictures(split_name: Any):
            with refusals():
                return viewer.gallery(split_name)

        upload.upload(analyse_upload, upload, [*analysis_outputs, upload], api_name="analyse_upload",
                      concurrency_id="model", concurrency_limit=1)
        if viewer.splits:
            gallery.select(analyse_pick, split, analysis_outputs, api_visibility="private", preprocess=False,
                           concurrency_id="model", concurrency_limit=1)
            split.change(pictures, split, gallery, api_visibility="private", preprocess=False)
        step.change(None, step, None, js=_SHOW_STEP_JS, api_visibility="private", show_progress="hidden")
        keep.input(intervene, [analysis_state, keep], [p_keep, effect], api_name="intervene", queue=False,
                   preprocess=False, show_progress="hidden", trigger_mode="always_last")
        download.click(prepare_files, analysis_state, files, api_name="downloads", concurrency_id="files",
                       concurrency_limit=1)
    app.queue(default_concurrency_limit=1, max_size=MAX_QUEUED)
    return app


#: The answer to an intervention or a download in a session without an analysed image.
_NO_ANALYSIS = (
    "no analysed image in this session: upload an image first (the server keeps the analyses of its "
    f"{MAX_SESSIONS} most recently used sessions)"
)


def _page_class(gr):
    """``gr.Blocks`` whose requests are fitted to, or refused by, each endpoint's inputs before its handler runs.

    The values of a request go to the handler one per input; a request sending only the API's values (no
    value for a ``gr.State``) has them placed, as Gradio's ``/call`` routes do. A request with another number
    of values, or one Gradio cannot turn into an input's value (an upload that is not an uploaded file...), is
    refused with one ``gr.Error`` naming the endpoint and what it takes (Gradio's own answer is a 500 without a
    message and a traceback in the server's log).
    """

    class Page(gr.Blocks):
        async def preprocess_data(self, block_fn, inputs, state, explicit_call=False):
            name = f"/{block_fn.api_name}" if block_fn.api_name else f"function {block_fn._id}"
            api = [block for block in block_fn.inputs if not block.skip_api]
            takes = ", ".join(f"{type(b).__name__} {b.label!r}" if b.label else type(b).__name__ for b in api)
            takes = f"{len(api)} value{'s' if len(api) != 1 else ''}" + (f" ({takes})" if takes else "")
            inputs = list(inputs)
            if len(inputs) == len(api) < len(block_fn.inputs):
                values = iter(inputs)
                inputs = [None if block.skip_api else next(values) for block in block_fn.inputs]
            if len(inputs) != len(block_fn.inputs):
                raise gr.Error(f"{name} takes {takes}; the request has {len(inputs)}", print_exception=False)
            try:
                return await super().preprocess_data(block_fn, inputs, state, explicit_call)
            except gr.Error:
                raise
            except Exception as exc:  # whatever Gradio raises for a value that is not an input's
                reason = " ".join(str(exc).split())
                if hasattr(exc, "errors"):  # pydantic: the first problem, not its multi-line report
                    first = exc.errors()[0]
                    reason = f"{first.get('msg')} (got {first.get('input')!r})"
                raise gr.Error(f"{name} takes {takes}; {reason}", print_exception=False) from None

    return Page


def launch(
    viewer: Viewer, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, prevent_thread_lock: bool = False,
    quiet: bool = False,
):
    """Build the page and serve it (offline, bounded: see the module docstring) until Ctrl-C, SIGTERM or SIGHUP.

    Gradio's temporary folder is set to the viewer's (``GRADIO_TEMP_DIR``, for the whole process: Gradio
    reads it whenever it checks a file), so that the viewer's folder holds every file the server writes.

    Args:
        viewer: the loaded checkpoint.
        host: address to bind (``127.0.0.1``: this machine only).
        port: TCP port.
        prevent_thread_lock: return once the server runs (tests, benchmarks) instead of serving until stopped.
        quiet: no start-up message from Gradio.

    Returns:
        The launched ``gr.Blocks`` (``close()`` stops it); stopped already unless ``prevent_thread_lock``.

    Raises:
        DermogazeError: the port is taken, or the server did not start in :data:`START_ATTEMPTS` tries.
    """
    if not 1 <= port <= 65535:
        raise DermogazeError(f"--port {port}: a TCP port is a number from 1 to 65535")
    os.environ["GRADIO_TEMP_DIR"] = str(viewer.folder.gradio)  # before the page's components read it
    app = build_app(viewer)
    from starlette.middleware import Middleware

    limit = Middleware(RequestLimit, upload_bytes=MAX_UPLOAD_BYTES, other_bytes=MAX_REQUEST_BYTES)
    from gradio.exceptions import ServerFailedToStartError

    with contextlib.nullcontext() if prevent_thread_lock else _signals_as_interrupt():
        try:
            for attempt in range(1, START_ATTEMPTS + 1):
                try:
                    app.launch(
                        server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
                        quiet=quiet, show_error=False, footer_links=["api"], run_history=False,
                        enable_monitoring=False, mcp_server=False, ssr_mode=False, pwa=False, theme="default",
                        css=_CSS, max_file_size=MAX_UPLOAD_BYTES, state_session_capacity=MAX_SESSIONS,
                        num_workers=0,  # no static file workers (GRADIO_NUM_WORKERS): every upload passes the limits
                        app_kwargs={"middleware": [limit],
                                    "exception_handlers": request_error_handlers(lambda: app.fns.values())},
                    )
                    break
                except ServerFailedToStartError:  # Gradio waits 5 s for its server thread: a busy machine misses it
                    app.close()
                    if attempt == START_ATTEMPTS:
                        raise DermogazeError(
                            f"the web server on {host}:{port} did not start within Gradio's 5 s, {START_ATTEMPTS} "
                            "times: the machine is too busy (or the port is in use); try again"
                        ) from None
                    logger.warning("the web server did not start within 5 s (a busy machine?): trying again")
            if not prevent_thread_lock:
                app.block_thread()  # until Ctrl-C (KeyboardInterrupt), which it catches
        except OSError as exc:
            raise DermogazeError(f"cannot serve on {host}:{port}: {exc} (choose another --port)") from None
        finally:
            if not prevent_thread_lock:
                app.close()  # an interruption while starting included
    return app


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread (Ctrl-C's way out, which cleans up)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {sig: signal.signal(sig, _interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
