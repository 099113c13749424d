"""The gaze viewer in the browser (``dermogaze serve``): one image's diagnosis, gaze by gaze.

The package, by concern::

    session.py   the model side: the checkpoint loaded once (Viewer), one analysed image (Analysis)
    drawing.py   the pictures: gaze path, attention, masks, ground truth over the image
    page.py      the HTML/Markdown fragments, the Gradio page (build_app) and launch
    guard.py     the HTTP boundary: request size limits, unknown functions answered with a 404
    workspace.py the server's own temporary folder, removed when it stops

A Gradio app over one trained checkpoint. The page, top to bottom:

* **Input**: upload a JPEG/PNG, or (with ``--data CACHE``) pick an image of a prepared split from
  a gallery; the ground truth of those is known.
* **Diagnosis**: P(melanoma) after the checkpoint's temperature scaling, the decision at its
  threshold (both fitted on the validation split, ``ckpt["calibration"]``) and, when known, the
  ground truth.
* **Gazes**: the numbered gaze path over the image and a step control ``t = 1..T``: gaze ``t``'s
  attention ``A_t`` over the image (Eq. 2), its decoded mask ``M_t`` and the structure it names
  (arg-max of ``softmax(pred_t)``), with the matched ground-truth structure and its mask when
  known and the step's explanation metrics where the record has them; a table of all steps.
* **Intervention** (gaze ablation, docs/design.md §6b): untick gazes and the diagnosis is recomputed
  without them by :meth:`~dermogaze.models.GazeNet.diagnose` from the network state kept at the
  first pass (no new encoder or ConvLSTM pass); ΔP is shown. The table also lists the ΔP of
  removing each gaze alone.
* **Download**: the JSON record and the figures of ``dermogaze explain`` for the current image
  (:func:`dermogaze.explain.run.save_explanation`).

How the work is split, so that only the first render pays for the network:

* The checkpoint is loaded once per process (:class:`.session.Viewer`); each browser tab keeps its
  current image's :class:`.session.Analysis` in its own ``gr.State``.
* The first render is one forward pass (:func:`dermogaze.explain.record.explain_image` over
  :meth:`GazeNet.forward_with_state <dermogaze.models.GazeNet.forward_with_state>`), one batched
  diagnosis for the per-gaze ablation (:mod:`.session`), and drawing (:mod:`.drawing`).
* Every gaze's views (path with that gaze ringed, attention, mask, ground truth, its text) are
  drawn at the first render and sent with it as HTML panels, one per gaze,
  pictures inlined as JPEG data URLs (:func:`.page.gazes_html`, :func:`.page.path_html`). A step
  change is then no request at all: the slider's change event runs a line of JavaScript in the
  browser that shows gaze ``t``'s panels and hides the others (:mod:`.page`); a server round trip
  through Gradio would be much slower. An intervention runs the diagnosis branch alone
  on the kept state. Network work is queued one request at a time (``concurrency_id="model"``:
  two cores are used by one forward pass already); interventions bypass Gradio's queue
  (``queue=False``: a plain HTTP request, no wait behind an upload and less overhead per request).

Decisions:

* Uploads go through a file field, not an image field, so that every byte is read by the
  project's own reader (:func:`dermogaze.data.images.load_user_image`: pixel budget, one mode
  conversion), and a bad file gets that reader's message in the page.
* Refused (a message in the page, nothing analysed): unreadable files, decompression bombs (the
  pixel budget), images above :data:`.session.MAX_UPLOAD_PIXELS` or whose shorter side is below
  :data:`.session.MIN_IMAGE_SIDE` (both from the header), and grayscale images (the diagnosis depends on
  colour, which they lack). Analysed with a warning: images with transparency (composited on white by the
  reader). Refused with an HTTP error or a ``gr.Error``: what is not a request of the page (too large, an
  unknown function, values the endpoint does not take): :mod:`.page` lists where each is caught.
* The attention colour scale is shared by all gazes of the image (as in ``explain``'s figure): a
  diffuse gaze looks faint, a focused one bright.
* Offline: ``GRADIO_ANALYTICS_ENABLED=False`` is set before Gradio is imported (Gradio is imported
  only by :func:`.page.build_app`, so the rest of dermogaze runs without it) and
  ``analytics_enabled=False`` given to the page; the default theme's fonts ship with Gradio; no
  share link, no run history, no monitoring endpoint; bound to 127.0.0.1 unless told otherwise.
"""

from ...config import DEFAULT_HOST, DEFAULT_PORT
from .page import build_app, launch
from .session import Analysis, Viewer

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Analysis", "Viewer", "build_app", "launch"]
