"""server: ``dermogaze serve`` over HTTP answers every request with a correct result or one clear error, keeps
serving, bounds what it holds and leaves no file behind when it stops.

One ``dermogaze serve`` subprocess (:class:`~.server_probe.Server`, over the tier's tiny run, T = 2 gazes) takes
the cases that leave it running: uploads that are not what the page takes (files that are not images, too
large, truncated, too many pixels), values the API's endpoints do not take, functions it does not have, bodies
too large. Each case checks the precise answer (HTTP status, message), that the server's log holds no traceback
and that the server still analyses a good image afterwards (:func:`~.server_probe.check_case`). The cases that
stop a server, or load it with 20 clients at once, start their own (marked ``slow``).
"""

from __future__ import annotations

import html
import json
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .cli_probe import Probe, write_zero_png
from .server_probe import (
    ANALYSIS,
    REQUEST_GUARD_S,
    NoAnswer,
    Server,
    analyse,
    call,
    check_case,
    detail,
    file_data,
    get,
    post_json,
    upload,
)

pytest.importorskip("gradio_client", reason="the server cases drive the viewer with gradio_client")

#: The gazes of the tier's tiny run (configs/tiny.yaml: model.steps).
T = 2
#: The endpoints the page offers, as the 404 of an unknown one lists them.
ENDPOINTS = ("this server's API endpoints are /analyse_upload, /intervene, /downloads (GET /gradio_api/info "
             "describes them)")
#: The answer to a request that needs an analysed image, in a session without one.
NO_ANALYSIS = ("no analysed image in this session: upload an image first (the server keeps the analyses of its 128 "
               "most recently used sessions)")
UPLOAD_INPUT = "File 'Dermoscopic image (JPEG or PNG), dropped here or chosen'"
KEEP_INPUT = "CheckboxGroup 'Gazes the diagnosis may use (untick to remove one)'"


@pytest.fixture(scope="module")
def server(probe_session: Probe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The module's server, started once (the tier's inputs are built first)."""
    probe_session.best  # noqa: B018 - builds the shared inputs before the server's start is timed
    srv = Server(probe_session, tmp_path_factory.mktemp("serve") / "tmp").start()
    yield srv
    srv.stop()
    srv.kill()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, probe_session: Probe) -> dict[str, Path]:
    """The uploads of the cases, written once."""
    folder = tmp_path_factory.mktemp("uploads")
    lesion = np.asarray(Image.open(probe_session.img).convert("RGB"))  # (48, 64, 3)
    out: dict[str, Path] = {}

    def path(name: str) -> Path:
        out[name] = folder / name
        return out[name]

    path("notes.png").write_text("these are my notes, not a picture\n")
    path("empty.jpg").write_bytes(b"")
    path("drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="48"></svg>\n')
    big = Image.fromarray(lesion).resize((640, 480), Image.Resampling.BILINEAR)
    big.save(path("whole.jpg"), quality=90)
    path("cut.jpg").write_bytes(out["whole.jpg"].read_bytes()[: out["whole.jpg"].stat().st_size // 2])
    big.save(path("whole.png"))
    path("cut.png").write_bytes(out["whole.png"].read_bytes()[: out["whole.png"].stat().st_size // 2])
    write_zero_png(path("bomb.png"), 12_000, 10_000)  # 120 million pixels claimed in ~120 kB
    Image.new("RGB", (7000, 6000), (150, 90, 70)).save(path("huge_photo.jpg"), quality=80)  # 42 million pixels
    Image.new("RGB", (1, 1), (120, 60, 40)).save(path("dot.png"))
    Image.fromarray(lesion).convert("L").save(path("grey.png"))
    rgba = np.dstack([lesion, np.full(lesion.shape[:2], 255, np.uint8)])
    rgba[:10, :, 3] = 0
    Image.fromarray(rgba).save(path("cutout.png"))
    Image.fromarray(lesion).convert("CMYK").save(path("print.jpg"))
    Image.fromarray(lesion).save(path("photo.png"), format="JPEG")  # a JPEG named .png
    with open(path("zeros_200MB.bin"), "wb") as fh:
        fh.truncate(200 << 20)  # sparse: no disk used here
    with open(path("zeros_64MB_and_1.bin"), "wb") as fh:
        fh.truncate((64 << 20) + 1)
    return out


def status_text(status: str) -> str:
    """The text of the page's status line (its HTML without tags)."""
    return html.unescape(re.sub(r"<[^>]+>", "", status or ""))


def session() -> str:
    return f"case-{threading.get_ident()}-{np.random.default_rng().integers(1 << 62)}"


# ----------------------------------------------------------------------------------------------
# Uploads the page refuses (in its status line) or analyses
# ----------------------------------------------------------------------------------------------
REFUSED_UPLOADS = {
    "srv-upload-not-an-image": ("notes.png", "notes.png: not a readable image (unreadable or truncated file; "
                                             "UnidentifiedImageError: cannot identify image file 'notes.png')"),
    "srv-upload-empty-file": ("empty.jpg", "empty.jpg: not a readable image (unreadable or truncated file; "
                                           "UnidentifiedImageError: cannot identify image file 'empty.jpg')"),
    "srv-upload-svg": ("drawing.svg", "drawing.svg: not a readable image (unreadable or truncated file; "
                                      "UnidentifiedImageError: cannot identify image file 'drawing.svg')"),
    "srv-upload-truncated-jpeg": ("cut.jpg", "cut.jpg: not a readable image (unreadable or truncated file; "
                                             "OSError: image file is truncated"),
    "srv-upload-truncated-png": ("cut.png", "cut.png: not a readable image (unreadable or truncated file; "),
    "srv-upload-decompression-bomb": ("bomb.png", "bomb.png: image is 12000×10000 = 120,000,000 pixels, above the "
                                                  "pixel budget of 100,000,000"),
    "srv-upload-over-the-viewer-limit": ("huge_photo.jpg", "huge_photo.jpg: the image is 7000×6000 = 42,000,000 "
                                                           "pixels; the viewer analyses images of at most "
                                                           "40,000,000 pixels: give a reduced copy"),
    "srv-upload-one-pixel": ("dot.png", "dot.png: the image is 1×1 pixels; a dermoscopic image of at least 32×32 "
                                        "pixels is needed"),
    "srv-upload-grayscale": ("grey.png", "grey.png: the image is grayscale; the diagnosis depends on colour: give "
                                         "the colour dermoscopic image"),
}


@pytest.mark.parametrize(("name", "message"), [pytest.param(*v, id=k) for k, v in REFUSED_UPLOADS.items()])
def test_an_upload_that_is_not_a_usable_image_is_refused_by_name(server: Server, files, name, message):
    """A file that is not an image, is cut short, claims too many pixels or too few, or lacks colour: the page's
    status line names the file (not the server's folder) and the problem; nothing is analysed."""
    mark = server.mark()
    event, out = analyse(server, files[name])
    text = status_text(out["status"]) if event == "complete" else ""
    check_case(
        server, mark, f"{event}: {str(out)[:160] if event != 'complete' else text[:160]}",
        (event == "complete", "not answered with the page's status line"),
        (text.startswith(message), f"status {text[:200]!r}, expected it to start with {message!r}"),
        (event != "complete" or out["record"] is None, "an analysis was returned"),
        (str(server.tmpdir) not in text, "the message shows the server's folder"),
    )


ANALYSED_UPLOADS = {
    "srv-upload-transparent-png": ("cutout.png", "cutout.png has transparent parts: they were composited on white"),
    "srv-upload-cmyk-jpeg": ("print.jpg", ""),
    "srv-upload-jpeg-named-png": ("photo.png", ""),
}


@pytest.mark.parametrize(("name", "note"), [pytest.param(*v, id=k) for k, v in ANALYSED_UPLOADS.items()])
def test_an_unusual_but_valid_image_is_analysed(server: Server, files, name, note):
    """A PNG with transparency (with a warning), a CMYK JPEG, a JPEG named ``.png``: analysed, the record names
    the image and its size."""
    mark = server.mark()
    event, out = analyse(server, files[name])
    record = out.get("record") if isinstance(out, dict) else None
    text = status_text(out["status"]) if event == "complete" else ""
    check_case(
        server, mark, f"{event}: {text[:120] or str(out)[:120]}",
        (record is not None, "not analysed"),
        (record is None or (record["image_id"], record["image_size"]) == (Path(name).stem, {"width": 64, "height": 48}),
         f"record {None if record is None else (record['image_id'], record['image_size'])}"),
        (text.startswith(note) if note else text == "", f"status {text[:160]!r}"),
    )


# ----------------------------------------------------------------------------------------------
# Uploads above the size limits (HTTP)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["srv-upload-200mb"])
def test_an_upload_of_200_mb_is_refused_before_it_is_stored(server: Server, files, case):
    """``POST /gradio_api/upload`` of 200 MB: 413 naming the size and the limit, nothing stored."""
    mark, before = server.mark(), server.files()
    status, answer = upload(server, files["zeros_200MB.bin"])
    check_case(
        server, mark, f"HTTP {status} {str(answer)[:160]}",
        (status == 413, f"HTTP {status}, expected 413"),
        (detail(answer) == "an upload of 200.0 MB is above the viewer's limit of 64.0 MB: give a smaller or "
                           "reduced copy of the image", f"message {detail(answer)!r}"),
        (set(server.files()) <= set(before), "the upload left files in the server's folder"),
    )


@pytest.mark.parametrize("case", ["srv-upload-limit-plus-one"])
def test_an_upload_one_byte_over_the_limit_is_refused(server: Server, files, case):
    """An upload of 64 MB + 1 byte (within the multipart slack, refused by Gradio's max_file_size): 413 naming the
    limit, nothing stored."""
    mark, before = server.mark(), server.files()
    status, answer = upload(server, files["zeros_64MB_and_1.bin"])
    check_case(
        server, mark, f"HTTP {status} {str(answer)[:160]}",
        (status == 413, f"HTTP {status}, expected 413"),
        (detail(answer) == "File size exceeded maximum allowed size of 67108864 bytes.", f"message {answer!r}"),
        (set(server.files()) <= set(before), "the upload left files in the server's folder"),
    )


@pytest.mark.parametrize("case", ["srv-upload-200mb-chunked"])
def test_a_chunked_upload_without_a_length_is_refused(server: Server, files, case):
    """An upload of 200 MB sent chunked (no Content-Length, so no size known before it is read): 411, nothing
    stored."""
    mark, before = server.mark(), server.files()
    status, answer = upload(server, files["zeros_200MB.bin"], chunked=True)
    check_case(
        server, mark, f"HTTP {status} {str(answer)[:160]}",
        (status == 411, f"HTTP {status}, expected 411"),
        (detail(answer) == "an upload must declare its length (Content-Length); chunked bodies are not accepted",
         f"message {detail(answer)!r}"),
        (set(server.files()) <= set(before), "the upload left files in the server's folder"),
    )


@pytest.mark.parametrize("case", ["srv-json-2mb"])
def test_a_json_request_above_one_megabyte_is_refused(server: Server, case):
    """A 2 MB JSON body to ``/gradio_api/call/intervene``: 413 naming the size and the limit."""
    mark = server.mark()
    status, answer = post_json(server, "/gradio_api/call/intervene", {"data": [list(range(1, 300_000))]})
    check_case(
        server, mark, f"HTTP {status} {str(answer)[:160]}",
        (status == 413, f"HTTP {status}, expected 413"),
        (re.fullmatch(r"a request of 2\.\d MB is above the viewer's limit of 1\.0 MB", str(detail(answer)))
         is not None, f"message {detail(answer)!r}"),
    )


@pytest.mark.parametrize("case", ["srv-json-invalid"])
def test_a_request_that_is_not_json_is_refused(server: Server, case):
    """``{not json`` to ``/gradio_api/call/intervene``: FastAPI's 422 naming the JSON error."""
    mark = server.mark()
    status, answer = post_json(server, "/gradio_api/call/intervene", b"{not json")
    errors = answer.get("detail") if isinstance(answer, dict) else None
    msg = errors[0].get("msg") if isinstance(errors, list) and errors else None
    check_case(server, mark, f"HTTP {status} {str(answer)[:160]}",
               (status == 422, f"HTTP {status}, expected 422"), (msg == "JSON decode error", f"message {msg!r}"))


# ----------------------------------------------------------------------------------------------
# /analyse_upload with values that are not an uploaded file
# ----------------------------------------------------------------------------------------------
def _stored(server: Server) -> str:
    status, stored = upload(server, server.probe.img)
    assert status == 200, (status, stored)
    return stored[0]


BAD_FILE_VALUES = {
    "srv-analyse-no-value": (lambda s: [], f"/analyse_upload takes 1 value ({UPLOAD_INPUT}); the request has 0"),
    "srv-analyse-two-values": (lambda s: [file_data(_stored(s), "a.jpg")] * 2,
                               f"/analyse_upload takes 1 value ({UPLOAD_INPUT}); the request has 2"),
    "srv-analyse-a-string": (lambda s: ["lesion.jpg"], f"/analyse_upload takes 1 value ({UPLOAD_INPUT}); Value error, "
                                                       "The 'meta' field must be explicitly provided"),
    "srv-analyse-a-number": (lambda s: [5], f"/analyse_upload takes 1 value ({UPLOAD_INPUT}); Value error, The "
                                            "'meta' field must be explicitly provided"),
    "srv-analyse-a-list-of-files": (lambda s: [[file_data(_stored(s), "a.jpg")]],
                                    f"/analyse_upload takes 1 value ({UPLOAD_INPUT}); Value error, The 'meta' field "
                                    "must be explicitly provided"),
    "srv-analyse-a-server-file": (lambda s: [file_data("/etc/hostname", "hostname")],
                                  f"/analyse_upload takes 1 value ({UPLOAD_INPUT}); Cannot move /etc/hostname to the "
                                  "gradio cache dir because it was not uploaded by a user."),
    "srv-analyse-a-url": (lambda s: [{"path": "http://127.0.0.1:9/x.png", "url": "http://127.0.0.1:9/x.png",
                                      "meta": {"_type": "gradio.FileData"}}],
                          f"/analyse_upload takes 1 value ({UPLOAD_INPUT}); Hostname 127.0.0.1 failed validation"),
}


@pytest.mark.parametrize(("make", "message"), [pytest.param(*v, id=k) for k, v in BAD_FILE_VALUES.items()])
def test_analyse_upload_refuses_a_value_that_is_not_one_uploaded_file(server: Server, make, message):
    """``/gradio_api/call/analyse_upload`` with no value, two, a string, a number, a list, a server file or a URL:
    one error naming the endpoint, what it takes and the problem."""
    mark = server.mark()
    event, answer = call(server, "analyse_upload", make(server))
    check_case(server, mark, f"{event}: {str(answer)[:200]}", (event == "error", f"{event}, expected an error"),
               (str(answer).startswith(message), f"message {str(answer)[:240]!r}, expected {message!r}..."))


@pytest.mark.parametrize("case", ["srv-analyse-null"])
def test_analyse_upload_of_no_file_says_so(server: Server, case):
    """``analyse_upload`` with ``null``: the page's status says no file was uploaded."""
    mark = server.mark()
    event, out = call(server, "analyse_upload", [None])
    text = status_text(out[ANALYSIS.index("status")]) if event == "complete" else ""
    check_case(server, mark, f"{event}: {str(out)[:160]}", (text == "No file was uploaded.", f"status {text!r}"))


# ----------------------------------------------------------------------------------------------
# /intervene and /downloads
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def analysed(server: Server) -> tuple[str, dict]:
    """A session with the good image analysed: its id and the analysis's record."""
    sid = session()
    event, out = analyse(server, server.probe.img, sid)
    assert event == "complete" and out["record"], (event, str(out)[:300])
    return sid, out["record"]


BAD_GAZES = {
    "srv-gaze-0": ([0], f"there is no gaze 0: this model makes {T} gazes, numbered 1 to {T}"),
    "srv-gaze-99": ([99], f"there is no gaze 99: this model makes {T} gazes, numbered 1 to {T}"),
    "srv-gaze-T-plus-1": ([T + 1], f"there is no gaze {T + 1}: this model makes {T} gazes, numbered 1 to {T}"),
    "srv-gaze-minus-1": ([-1], f"there is no gaze -1: this model makes {T} gazes, numbered 1 to {T}"),
    "srv-gaze-letter": (["a"], f"gaze 'a' is not a gaze number: the gazes are numbered 1 to {T}"),
    "srv-gaze-fraction": ([1.5], f"gaze 1.5 is not a gaze number: the gazes are numbered 1 to {T}"),
    "srv-gaze-null": ([None], f"gaze None is not a gaze number: the gazes are numbered 1 to {T}"),
    "srv-gaze-true": ([True], f"gaze True is not a gaze number: the gazes are numbered 1 to {T}"),
    "srv-gaze-nested-list": ([[1]], f"gaze [1] is not a gaze number: the gazes are numbered 1 to {T}"),
    "srv-gaze-twice": ([1, 1], "gaze 1 is listed twice: list each gaze to keep once"),
    "srv-gazes-a-string": ("x", f"the gazes to keep are a list of gaze numbers from 1 to {T} (e.g. [1, 2]), not 'x'"),
    "srv-gazes-a-number": (5, f"the gazes to keep are a list of gaze numbers from 1 to {T} (e.g. [1, 2]), not 5"),
    "srv-gazes-null": (None, f"the gazes to keep are a list of gaze numbers from 1 to {T} (e.g. [1, 2]), not None"),
    "srv-gazes-a-mapping": ({"a": 1}, f"the gazes to keep are a list of gaze numbers from 1 to {T} (e.g. [1, 2]), "
                                      "not {'a': 1}"),
}


@pytest.mark.parametrize(("keep", "message"), [pytest.param(*v, id=k) for k, v in BAD_GAZES.items()])
def test_intervene_refuses_what_is_not_a_list_of_distinct_gaze_numbers(server: Server, analysed, keep, message):
    """``/intervene`` after an analysis, with gazes out of 1..T, not whole numbers, repeated, or not a list: one
    error naming the value and the gazes there are; the session's analysis is kept."""
    sid, record = analysed
    mark = server.mark()
    event, answer = call(server, "intervene", [keep], sid)
    after, out = call(server, "intervene", [list(range(1, T + 1))], sid)
    kept = after == "complete" and abs(out[0] - record["melanoma_probability"]) < 1e-3
    check_case(server, mark, f"{event}: {str(answer)[:200]}", (event == "error", f"{event}, expected an error"),
               (answer == message, f"message {answer!r}, expected {message!r}"),
               (kept, f"the session's analysis is not kept: {after} {str(out)[:120]}"))


@pytest.mark.parametrize("case", ["srv-gazes-as-digit-strings"])
def test_intervene_takes_gaze_numbers_as_digits(server: Server, analysed, case):
    """``/intervene`` with ``["1", "2"]`` (the API description gives the choices as strings): P(melanoma) with every
    gaze, the analysis's own."""
    sid, record = analysed
    mark = server.mark()
    event, out = call(server, "intervene", [[str(t) for t in range(1, T + 1)]], sid)
    ok = event == "complete" and abs(out[0] - record["melanoma_probability"]) < 1e-3
    check_case(server, mark, f"{event}: {str(out)[:200]}", (ok, "not P(melanoma) with every gaze"),
               (ok and out[1].startswith("All gazes used"), f"text {str(out)[:160]!r}"))


@pytest.mark.parametrize("case", ["srv-gazes-none-kept"])
def test_intervene_with_every_gaze_off_names_them(server: Server, analysed, case):
    """``/intervene`` with ``[]``: a probability, and the text names every gaze as removed."""
    sid, _ = analysed
    mark = server.mark()
    event, out = call(server, "intervene", [[]], sid)
    ok = event == "complete" and isinstance(out[0], float) and 0.0 <= out[0] <= 1.0
    check_case(server, mark, f"{event}: {str(out)[:200]}", (ok, "no probability"),
               (ok and out[1].startswith(f"Without gazes {', '.join(map(str, range(1, T + 1)))}: P(melanoma) = "),
                f"text {str(out)[:160]!r}"))


@pytest.mark.parametrize(("data", "message"), [
    pytest.param([], f"/intervene takes 1 value ({KEEP_INPUT}); the request has 0", id="srv-intervene-no-value"),
    pytest.param([[1], [1], [1]], f"/intervene takes 1 value ({KEEP_INPUT}); the request has 3",
                 id="srv-intervene-three-values"),
])
def test_intervene_refuses_a_request_with_another_number_of_values(server: Server, analysed, data, message):
    """``/intervene`` with no value or three: one error naming the endpoint and what it takes."""
    sid, _ = analysed
    mark = server.mark()
    event, answer = call(server, "intervene", data, sid)
    check_case(server, mark, f"{event}: {str(answer)[:200]}", (event == "error", f"{event}, expected an error"),
               (answer == message, f"message {answer!r}, expected {message!r}"))


@pytest.mark.parametrize(("name", "data"), [pytest.param("intervene", [[1]], id="srv-intervene-before-an-image"),
                                            pytest.param("downloads", [], id="srv-downloads-before-an-image")])
def test_a_session_without_an_image_is_told_to_upload_one(server: Server, name, data):
    """``/intervene`` or ``/downloads`` in a fresh session: one error saying that no image was analysed."""
    mark = server.mark()
    event, answer = call(server, name, data, session())
    check_case(server, mark, f"{event}: {str(answer)[:200]}", (event == "error", f"{event}, expected an error"),
               (answer == NO_ANALYSIS, f"message {answer!r}"))


@pytest.mark.parametrize("case", ["srv-downloads"])
def test_downloads_are_the_files_of_the_analysed_image(server: Server, analysed, case):
    """``/downloads`` after an analysis: the JSON record and the two figures of that image."""
    sid, record = analysed
    mark = server.mark()
    event, out = call(server, "downloads", [], sid)
    names = sorted(Path(f["path"]).name for f in out[0]["value"]) if event == "complete" else []
    stem = record["image_id"]
    check_case(server, mark, f"{event}: {str(out)[:200]}",
               (names == sorted([f"{stem}.json", f"{stem}_gazes.png", f"{stem}_masks.png"]), f"files {names}"))


# ----------------------------------------------------------------------------------------------
# Functions the page does not have
# ----------------------------------------------------------------------------------------------
UNKNOWN = {
    "srv-unknown-fn-index-run": ("/gradio_api/run/predict", {"fn_index": 999, "data": [], "session_hash": "x"},
                                 f"fn_index 999 names no function of this page: {ENDPOINTS}"),
    "srv-unknown-fn-index-queue": ("/gradio_api/queue/join", {"fn_index": 999, "data": [], "session_hash": "x"},
                                   f"fn_index 999 names no function of this page: {ENDPOINTS}"),
    "srv-negative-fn-index": ("/gradio_api/run/predict", {"fn_index": -1, "data": [], "session_hash": "x"},
                              f"fn_index -1 names no function of this page: {ENDPOINTS}"),
    "srv-unknown-api-name-call": ("/gradio_api/call/nope", {"data": []}, f"no API endpoint /nope: {ENDPOINTS}"),
    "srv-unknown-api-name-run": ("/gradio_api/run/nope", {"data": []}, f"no API endpoint /nope: {ENDPOINTS}"),
    "srv-unknown-api-name-call-v2": ("/gradio_api/call/v2/nope", {}, f"no API endpoint /nope: {ENDPOINTS}"),
}


@pytest.mark.parametrize(("path", "body", "message"), [pytest.param(*v, id=k) for k, v in UNKNOWN.items()])
def test_an_unknown_function_is_a_404_listing_the_endpoints(server: Server, path, body, message):
    """An ``fn_index`` or API name the page does not have: 404 naming it and listing the page's endpoints."""
    mark = server.mark()
    status, answer = post_json(server, path, body)
    check_case(server, mark, f"HTTP {status} {str(answer)[:200]}", (status == 404, f"HTTP {status}, expected 404"),
               (detail(answer) == message, f"message {detail(answer)!r}"))


@pytest.mark.parametrize("case", ["srv-call-v2-unknown-argument"])
def test_call_v2_with_an_argument_the_endpoint_lacks_is_a_422(server: Server, case):
    """``/gradio_api/call/v2/intervene`` with ``{"keep": [1]}`` (its argument is ``ticked``): 422 naming it
   ."""
    mark = server.mark()
    status, answer = post_json(server, "/gradio_api/call/v2/intervene", {"keep": [1]})
    check_case(server, mark, f"HTTP {status} {str(answer)[:200]}", (status == 422, f"HTTP {status}, expected 422"),
               (str(detail(answer)).startswith("Parameter `keep` is not a valid key-word argument"),
                f"message {detail(answer)!r}"))


def _fn_index(server: Server, name: str) -> int:
    """The ``fn_index`` of the page's function ``name`` (the browser calls private functions by it)."""
    status, text = get(server, "/config")
    assert status == 200, (status, text[:200])
    return next(d["id"] for d in json.loads(text)["dependencies"] if d.get("api_name") == name)


PICKS = {
    "srv-pick-no-event-data": (["test"], None, "has 8 images, not an image number None"),
    "srv-pick-image-99": (["test"], {"index": 99, "value": None}, "has 8 images, not an image number 99"),
    "srv-pick-unknown-split": (["nosplit"], {"index": 0, "value": None},
                               "has no split 'nosplit' (it holds test, train, val)"),
}


@pytest.mark.parametrize(("data", "event_data", "message"), [pytest.param(*v, id=k) for k, v in PICKS.items()])
def test_a_gallery_pick_the_split_lacks_is_refused(server: Server, data, event_data, message):
    """The gallery's (private) function called by ``fn_index`` with no event data, image 99 of an 8-image split,
    or an unknown split: the page's status names the split and the problem."""
    mark = server.mark()
    body = {"fn_index": _fn_index(server, "analyse_pick"), "data": data, "session_hash": session(),
            "event_data": event_data}
    status, answer = post_json(server, "/gradio_api/run/predict", body)
    text = status_text(answer["data"][ANALYSIS.index("status")]) if status == 200 and "data" in answer else ""
    check_case(server, mark, f"HTTP {status} {str(answer)[:200]}", (status == 200, f"HTTP {status}, expected 200"),
               (text.endswith(message), f"status {text!r}, expected it to end with {message!r}"))


# ----------------------------------------------------------------------------------------------
# Many clients at once
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["srv-20-sessions"])
def test_twenty_sessions_each_keep_their_own_analysis(server: Server, case):
    """20 sessions analyse, in turn, one of two test images; then each asks ``/intervene`` with every gaze: each
    gets the P(melanoma) of its own image."""
    mark = server.mark()
    sessions = [session() for _ in range(20)]
    records = {}
    for k, sid in enumerate(sessions):
        event, out = analyse(server, server.probe.img2 if k % 2 else server.probe.img, sid)
        records[sid] = out["record"]["melanoma_probability"] if event == "complete" and out["record"] else None
    answers = [call(server, "intervene", [list(range(1, T + 1))], sid) for sid in sessions]
    right = [a == "complete" and records[s] is not None and abs(out[0] - records[s]) < 1e-3
             for s, (a, out) in zip(sessions, answers, strict=True)]
    p = sorted({round(v, 3) for v in records.values() if v is not None})
    check_case(server, mark, f"{sum(right)}/20 right; answers {[str(o)[:40] for _, o in answers[:3]]}",
               (None not in records.values(), "an analysis failed"), (all(right), "a session got another's result"),
               (len(p) == 2, f"the two images got the same P(melanoma) {p}: the case cannot tell sessions apart"))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["srv-upload-storm-memory"])
def test_memory_stays_bounded_under_a_20_thread_upload_storm(probe_session: Probe, tmp_path, files, case):
    """20 clients (``gradio_client``) at once, each uploading a 42-megapixel photograph (over the viewer's limit)
    and the good image: every photograph refused with the limit's message, every good image analysed, the
    server's peak RSS within 1 GB of its RSS before the storm."""
    from gradio_client import Client, handle_file

    server = Server(probe_session, tmp_path / "tmp").start()
    try:
        Client(server.url, verbose=False, download_files=False, analytics_enabled=False).predict(
            handle_file(str(probe_session.img)), api_name="/analyse_upload")  # first-call costs paid
        rss_before = server.status("VmRSS")
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # the peak RSS (VmHWM) starts again from now
        outcomes: list[tuple[str, str]] = []

        def user() -> None:
            client = Client(server.url, verbose=False, download_files=False, analytics_enabled=False,
                            httpx_kwargs={"timeout": REQUEST_GUARD_S})
            for path in (files["huge_photo.jpg"], probe_session.img):
                try:
                    out = client.predict(handle_file(str(path)), api_name="/analyse_upload")
                    outcomes.append((path.name, "analysed" if out[-3] else status_text(out[0])))
                except Exception as exc:  # the outcome, whatever it is, is the finding
                    outcomes.append((path.name, f"{type(exc).__name__}: {exc}"[:200]))

        threads = [threading.Thread(target=user) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(REQUEST_GUARD_S * 4)
        growth_mb = (server.status("VmHWM") - rss_before) / 1024
        hung = any(t.is_alive() for t in threads)
        log = server.log
    finally:
        server.stop()
        server.kill()
    refused = "huge_photo.jpg: the image is 7000×6000 = 42,000,000 pixels; the viewer analyses images of at most"
    wrong = [o for o in outcomes if not (o[1] == "analysed" if o[0] == probe_session.img.name
                                        else o[1].startswith(refused))]
    assert not hung and len(outcomes) == 40 and not wrong and growth_mb < 1024 and "Traceback" not in log, (
        f"NOT CLEAN: peak RSS {growth_mb:.0f} MB above the RSS before the storm (bound 1024 MB), "
        f"{len(outcomes)}/40 answered, hung: {hung}, unexpected outcomes: {wrong[:3]}")


# ----------------------------------------------------------------------------------------------
# Stopping: nothing left behind
# ----------------------------------------------------------------------------------------------
def _use(server: Server) -> None:
    """Analyse the good image and prepare its downloads: the server writes every kind of file it writes."""
    sid = session()
    event, out = analyse(server, server.probe.img, sid)
    assert event == "complete" and out["record"], (event, str(out)[:300])
    event, out = call(server, "downloads", [], sid)
    assert event == "complete", (event, str(out)[:300])


@pytest.mark.slow
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGTERM, id="srv-stop-sigterm"),
                                 pytest.param(signal.SIGINT, id="srv-stop-ctrl-c"),
                                 pytest.param(signal.SIGHUP, id="srv-stop-sighup")])
def test_a_stopped_server_leaves_no_file(probe_session: Probe, tmp_path, sig):
    """A server that analysed an image and prepared its downloads, then stopped by SIGTERM, Ctrl-C (SIGINT) or
    SIGHUP: it ends (status 0) and no file of it is left in its temporary folder."""
    server = Server(probe_session, tmp_path / "tmp").start()
    try:
        _use(server)
        rc = server.stop(sig)
    finally:
        server.kill()
    left = server.files()
    assert rc == 0 and not left and "Traceback" not in server.log, (
        f"NOT CLEAN: rc={rc}, {len(left)} files left: {left[:4]}; log: {server.log[-300:]}")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["srv-stale-folder-of-a-killed-server"])
def test_the_folder_of_a_killed_server_is_removed_by_the_next(probe_session: Probe, tmp_path, case):
    """A server killed outright (SIGKILL) leaves its folder; the next server started with the same temporary
    folder removes it, and leaves nothing itself when it stops."""
    first = Server(probe_session, tmp_path / "tmp").start()
    try:
        _use(first)
    finally:
        first.kill()
    left_by_kill = first.files()
    second = Server(probe_session, tmp_path / "tmp").start()
    try:
        stale = [f for f in second.files() if f in left_by_kill]
        _use(second)
        rc = second.stop()
    finally:
        second.kill()
    left = second.files()
    assert left_by_kill and not stale and rc == 0 and not left, (
        f"NOT CLEAN: the killed server left {len(left_by_kill)} files, {len(stale)} of them still there after the "
        f"next start; rc={rc}; {len(left)} files left after it stopped: {left[:4]}")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["srv-second-server-spares-the-first"])
def test_a_second_server_spares_the_folder_of_a_running_one(probe_session: Probe, tmp_path, case):
    """Two servers with one temporary folder: the second's start and stop leave the first's files, and the first
    still serves; once both stopped, no file is left."""
    first = Server(probe_session, tmp_path / "tmp").start()
    second = None
    try:
        _use(first)
        kept = first.files()
        second = Server(probe_session, tmp_path / "tmp").start()
        _use(second)
        rc_second = second.stop()
        missing = [f for f in kept if f not in first.files()]
        try:
            event, out = analyse(first, probe_session.img)
            serving = event == "complete" and bool(out["record"])
        except NoAnswer:
            serving = False
        rc_first = first.stop()
    finally:
        first.kill()
        if second is not None:
            second.kill()
    left = first.files()
    assert not missing and serving and rc_first == rc_second == 0 and not left, (
        f"NOT CLEAN: {len(missing)} of the first server's files gone, first still serving: {serving}, "
        f"rc {rc_first}/{rc_second}, {len(left)} files left: {left[:4]}")
