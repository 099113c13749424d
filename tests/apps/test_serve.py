"""The gaze viewer (``dermogaze serve``): its API through ``gradio_client`` against a launched app, and its parts.

The model is :func:`crafted_gaze_checkpoint` (conftest): its diagnosis reads gaze 1 alone, so the
interventions have hand-computed answers: without gaze 1, P(melanoma) = sigmoid(0) = 0.5 exactly;
without gaze 2, it does not change.
"""

import importlib.util
import json
import math
import re
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from support import png_claiming  # a decompression bomb's header

if importlib.util.find_spec("gradio") is None:  # found, not imported: only the tests that launch the app pay for it
    pytest.skip("the viewer's tests need the test extra (gradio, gradio_client)", allow_module_level=True)
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from dermogaze.apps.serve import Viewer, launch  # noqa: E402
from dermogaze.apps.serve.drawing import _to_display, render_path, render_step  # noqa: E402
from dermogaze.apps.serve.page import steps_table, structure_label  # noqa: E402
from dermogaze.apps.serve.session import DISPLAY_SIDE, MAX_UPLOAD_PIXELS, MIN_IMAGE_SIDE, gaze_numbers  # noqa: E402
from dermogaze.apps.serve.workspace import LOCK_NAME, PREFIX, ServerFolder, remove_stale  # noqa: E402
from dermogaze.errors import DermogazeError  # noqa: E402
from dermogaze.explain.run import run_explain  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # Gradio's queue calls pandas options that pandas 3 deprecates: not ours to fix
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:Warning",
                               "ignore:The copy keyword is deprecated:Warning"),
]

#: The outputs of an analysis event, in the order the app returns them (the tab's state and layout are not sent).
ANALYSIS = ("status", "diagnosis", "path", "legend", "step", "gazes", "table", "keep", "p_keep", "effect", "record",
            "files", "upload")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def viewer(crafted_gaze_checkpoint, pipeline_cache) -> Viewer:
    # float32 whatever the default precision: the tests compare with float32 references
    with Viewer(crafted_gaze_checkpoint, pipeline_cache, device="cpu", amp="off") as v:
        yield v


@pytest.fixture(scope="module")
def server(viewer):
    """The app launched on a free port of 127.0.0.1; yields its URL."""
    app = launch(viewer, port=free_port(), prevent_thread_lock=True, quiet=True)
    yield app.local_url
    app.close()


@pytest.fixture
def client(server) -> Client:
    """A fresh client: a browser tab of its own (its own session and state)."""
    return Client(server, verbose=False, download_files=False)


@pytest.fixture(scope="module")
def lesion_jpg(pipeline_data) -> Path:
    """A synthetic dermoscopic JPEG (64×48) of the pipeline's test split."""
    return sorted((pipeline_data["isic"] / "ISIC-2017_Test_v2_Data").rglob("ISIC_*.jpg"))[0]


def analyse(client: Client, path: Path) -> dict:
    return dict(zip(ANALYSIS, client.predict(handle_file(str(path)), api_name="/analyse_upload"), strict=True))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_upload_returns_the_record_of_dermogaze_explain(client, lesion_jpg, crafted_gaze_checkpoint, tmp_path):
    out = analyse(client, lesion_jpg)
    rec = out["record"]
    (expected,) = run_explain(crafted_gaze_checkpoint, [lesion_jpg], tmp_path, device="cpu", progress=False)
    assert rec["image_id"] == lesion_jpg.stem
    assert rec["n_steps"] == 2 and len(rec["steps"]) == 2
    assert rec["melanoma_probability"] == pytest.approx(expected["melanoma_probability"], abs=1e-6)
    assert [s["gaze"] for s in rec["steps"]] == [s["gaze"] for s in expected["steps"]]
    assert [s["structure"] for s in rec["steps"]] == [s["structure"] for s in expected["steps"]]
    assert rec["ground_truth"] is None  # an upload has none
    assert out["status"] == ""
    assert f"{rec['melanoma_probability']:.3f}" in out["diagnosis"]
    assert f"Decision: <b>{rec['prediction']}</b>" in out["diagnosis"]
    assert out["p_keep"] == pytest.approx(rec["melanoma_probability"], abs=1e-3)
    assert '<div class="dg-panel" data-dg-step="1"><div class="dg-step-text"><p><b>Gaze 1 of 2</b>' in out["gazes"]
    assert out["keep"]["value"] == [1, 2]
    assert [c[0] for c in out["keep"]["choices"]] == [
        f"gaze {t}: {structure_label(s['structure'])}" for t, s in enumerate(rec["steps"], 1)
    ]
    assert out["table"]["headers"][0] == "gaze" and [row[0] for row in out["table"]["data"]] == [1, 2]


def test_intervention_recomputes_the_diagnosis_without_the_gazes_switched_off(client, lesion_jpg):
    rec = analyse(client, lesion_jpg)["record"]
    p_full = rec["melanoma_probability"]
    assert p_full > 0.6  # the crafted model: sigmoid(50 · mean GAP(X̃'_1)) is melanoma at the threshold 0.6
    p, text = client.predict([2], api_name="/intervene")  # gaze 1 off: only zero weights remain
    assert p == pytest.approx(0.5, abs=1e-3)
    assert f"ΔP = **{0.5 - p_full:+.3f}**" in text and "the decision changes" in text
    p, text = client.predict([1], api_name="/intervene")  # gaze 2 off: the top reads nothing of it
    assert p == pytest.approx(p_full, abs=1e-3)
    assert "ΔP = **+0.000**" in text and "the decision stays" in text
    p, text = client.predict([1, 2], api_name="/intervene")
    assert p == pytest.approx(p_full, abs=1e-3) and text.startswith("All gazes used")


def test_intervention_reuses_the_state_and_matches_the_closed_form(viewer, lesion_jpg):
    analysis = viewer.analyse_file(lesion_jpg)
    pooled = analysis.state.pooled[0]  # (T, C) GAP(X̃'_t), from the one forward pass
    assert analysis.record["melanoma_probability"] == pytest.approx(sigmoid(50.0 * float(pooled[0].mean())),
                                                                    abs=1e-5)
    calls = []
    encoder_forward = viewer.model.encoder.forward
    viewer.model.encoder.forward = lambda *a, **k: calls.append(1) or encoder_forward(*a, **k)
    try:
        assert viewer.intervene(analysis, [2]) == pytest.approx(0.5, abs=1e-6)
        assert viewer.intervene(analysis, []) == pytest.approx(0.5, abs=1e-6)
    finally:
        del viewer.model.encoder.forward
    assert calls == []  # no encoder pass: the kept features were reused
    assert analysis.ablation == pytest.approx([0.5, analysis.record["melanoma_probability"]], abs=1e-6)
    assert steps_table(analysis)[0][3] == f"{0.5 - analysis.record['melanoma_probability']:+.3f}"


def panels(html_text: str) -> dict[int, str]:
    """The gaze panels of an HTML output: ``{t: the panel's HTML}``."""
    parts = re.split(r'<div class="dg-panel" data-dg-step="(\d+)"', html_text)
    assert parts[0] == ""
    return {int(t): body for t, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_upload_sends_every_gazes_view_for_the_browser_to_step_through(client, lesion_jpg):
    out = analyse(client, lesion_jpg)
    rec = out["record"]
    gazes, paths = panels(out["gazes"]), panels(out["path"])
    assert sorted(gazes) == sorted(paths) == [1, 2]  # a step change needs no request: every gaze is in the page
    for t, s in enumerate(rec["steps"], 1):
        body = gazes[t]
        assert body.startswith(">" if t == 1 else " hidden>")  # gaze 1 shown first, the others hidden
        assert paths[t].startswith(">" if t == 1 else " hidden>") and f"gaze {t} ringed" in paths[t]
        assert f"<b>Gaze {t} of 2</b> looked at pixel (x {s['gaze']['x']}, y {s['gaze']['y']})" in body
        assert f"It names <b>{structure_label(s['structure'])}</b>" in body
        assert body.count('<img src="data:image/jpeg;base64,') == 2  # attention and mask; an upload has no ground truth
        assert "Ground truth mask" not in body
    assert gazes[1] != gazes[2] and paths[1] != paths[2]


def test_gaze_panels_of_a_dataset_image_show_its_ground_truth(viewer):
    from dermogaze.apps.serve.page import gazes_html

    analysis = viewer.analyse_cached("test", 0)
    gazes = panels(gazes_html(analysis))
    assert any(s.get("gt_structure") is not None for s in analysis.record["steps"])
    for t, s in enumerate(analysis.record["steps"], 1):
        if s.get("gt_structure") is not None:
            assert "Ground truth mask" in gazes[t] and gazes[t].count("<img ") == 3
            assert f"Ground truth there: <b>{structure_label(s['gt_structure'])}</b>" in gazes[t]
        if s.get("pointing_hit") is not None:  # named: it may differ from the ground truth shown
            assert "Pointing game <b>" in gazes[t]
            assert f"on its matched structure, <b>{structure_label(s['matched_structure'])}</b>" in gazes[t]
    for row, s in zip(steps_table(analysis), analysis.record["steps"], strict=True):
        if s.get("pointing_hit") is not None:
            assert row[7] == f"{'hit' if s['pointing_hit'] else 'miss'} ({structure_label(s['matched_structure'])})"


def test_bad_input_gets_a_message_and_the_server_keeps_serving(client, lesion_jpg, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("these are my notes, not a picture")
    tiny = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (120, 60, 40)).save(tiny)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.asarray(Image.open(lesion_jpg).convert("L"))).save(grey)
    cases = {
        not_image: "notes.png: not a readable image",
        png_claiming(tmp_path / "bomb.png", 30_000, 30_000): "pixel budget",
        tiny: f"dot.png: the image is 1×1 pixels; a dermoscopic image of at least {MIN_IMAGE_SIDE}",
        grey: "grey.png: the image is grayscale",
    }
    for path, message in cases.items():
        out = analyse(client, path)
        assert message in out["status"], (path.name, out["status"])
        assert 'class="dg-error"' in out["status"]
        assert out["record"] is None and out["p_keep"] is None and out["path"] == "" and out["gazes"] == ""
        good = analyse(client, lesion_jpg)  # the next request is served as usual
        assert good["status"] == "" and good["record"]["image_id"] == lesion_jpg.stem


def test_transparent_image_is_analysed_with_a_warning(client, lesion_jpg, tmp_path):
    rgba = np.dstack([np.asarray(Image.open(lesion_jpg).convert("RGB")), np.full((48, 64), 255, np.uint8)])
    rgba[:10, :, 3] = 0  # a transparent band
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba).save(path)
    out = analyse(client, path)
    assert 'class="dg-warn"' in out["status"] and "transparent parts" in out["status"]
    assert out["record"]["image_id"] == "cutout" and out["record"]["n_steps"] == 2


def test_tabs_keep_their_own_image(server, lesion_jpg, tmp_path):
    other = tmp_path / "other.png"
    Image.fromarray(255 - np.asarray(Image.open(lesion_jpg).convert("RGB"))).save(other)
    first, second = (Client(server, verbose=False, download_files=False) for _ in range(2))
    p_first = analyse(first, lesion_jpg)["record"]["melanoma_probability"]
    p_second = analyse(second, other)["record"]["melanoma_probability"]
    assert abs(p_first - p_second) > 1e-3  # two images the model tells apart
    assert first.predict([1], api_name="/intervene")[0] == pytest.approx(p_first, abs=1e-3)
    assert second.predict([1], api_name="/intervene")[0] == pytest.approx(p_second, abs=1e-3)
    with pytest.raises(AppError, match="^no analysed image in this session: upload an image first"):
        Client(server, verbose=False).predict([1], api_name="/intervene")  # a new tab: no image yet


def test_downloads_are_the_files_of_dermogaze_explain(server, lesion_jpg, tmp_path):
    client = Client(server, verbose=False, download_files=str(tmp_path))  # fetches the files, as a browser does
    rec = analyse(client, lesion_jpg)["record"]
    update = client.predict(api_name="/downloads")
    assert update["visible"] is True
    files = [Path(f) for f in update["value"]]
    stem = lesion_jpg.stem
    assert sorted(f.name for f in files) == sorted([f"{stem}.json", f"{stem}_gazes.png", f"{stem}_masks.png"])
    saved = json.loads(next(f for f in files if f.suffix == ".json").read_text())
    assert saved["melanoma_probability"] == rec["melanoma_probability"] and saved["steps"] == rec["steps"]
    assert saved["files"] == {"gazes": f"{stem}_gazes.png", "masks": f"{stem}_masks.png"}
    assert "files" not in rec  # the tab's record is left as it was
    with Image.open(next(f for f in files if f.name.endswith("_gazes.png"))) as im:
        assert im.format == "PNG"


def test_dataset_image_carries_its_ground_truth(viewer, crafted_gaze_checkpoint, pipeline_cache, tmp_path):
    analysis = viewer.analyse_cached("test", 0)
    (expected,) = run_explain(crafted_gaze_checkpoint, ["test"], tmp_path, data=pipeline_cache, limit=1,
                              device="cpu", progress=False)
    rec = analysis.record
    assert rec["image_id"] == expected["image_id"]
    assert rec["ground_truth"] == expected["ground_truth"] and rec["ground_truth"] is not None
    assert [s["gt_structure"] for s in rec["steps"]] == [s["gt_structure"] for s in expected["steps"]]
    att, mask, gt = render_step(analysis, 1)
    assert gt is not None and gt.shape == att.shape == mask.shape
    gallery = viewer.gallery("test")
    diagnosis = rec["ground_truth"]["diagnosis"]
    assert len(gallery) == 8 and gallery[0][1] == f"{diagnosis} · {rec['image_id']}"
    with Image.open(gallery[0][0]) as im:
        assert im.size == (40, 40)  # the cache image, whole
    with pytest.raises(DermogazeError, match="has no split 'nope'"):
        viewer.analyse_cached("nope", 0)


def test_display_coordinates_and_overlay_place(viewer, lesion_jpg):
    analysis = viewer.analyse_file(lesion_jpg)  # 64×48 image shown at 384×288
    assert analysis.display.shape == (DISPLAY_SIDE * 48 // 64, DISPLAY_SIDE, 3)
    assert _to_display(analysis, 0, 0) == pytest.approx((2.5, 2.5))  # pixel 0 spans [0, 6) of the display
    assert _to_display(analysis, 63, 47) == pytest.approx((380.5, 284.5))
    expl = analysis.explanation
    expl.attention = np.zeros_like(expl.attention)
    expl.attention[:, 0, 0] = 1.0  # every gaze on the top-left cell
    att, _, _ = render_step(analysis, 1)
    far = (slice(200, 288), slice(300, 384))  # no attention there: the photograph shows through untouched
    np.testing.assert_array_equal(att[far], analysis.display[far])
    assert not np.array_equal(att[:20, :20], analysis.display[:20, :20])


def test_a_variant_without_gazes_shows_its_diagnosis_only(pipeline_cache, tmp_path, lesion_jpg):
    from dermogaze.config import load_config
    from dermogaze.data.cache import load_info
    from dermogaze.models import build_model
    from dermogaze.training.checkpoint import checkpoint_state, save_checkpoint

    cfg = load_config("tiny", [f"data.cache={pipeline_cache}", "model.name=vgg_gap"])
    model = build_model("vgg_gap", image_size=cfg.model.image_size, width=cfg.model.width)
    state = checkpoint_state(
        cfg, model, torch.optim.SGD(model.parameters(), lr=0.1), torch.amp.GradScaler("cpu", enabled=False),
        load_info(pipeline_cache), epoch=1, best_val=None, best_epoch=1, rngs=[], metrics={},
        calibration={"temperature": 1.0, "threshold": 0.5, "threshold_rule": "0.5"},
    )
    viewer = Viewer(save_checkpoint(tmp_path / "vgg_gap.pt", state), device="cpu", amp="off")
    assert viewer.steps == 0 and viewer.splits == []
    analysis = viewer.analyse_file(lesion_jpg)
    assert analysis.record["n_steps"] == 0 and not analysis.has_gazes and analysis.ablation is None
    with torch.no_grad():
        p = float(viewer.model(analysis_input(viewer, lesion_jpg)).melanoma_prob[0])
    assert analysis.record["melanoma_probability"] == pytest.approx(p, abs=1e-6)
    np.testing.assert_array_equal(render_path(analysis), analysis.display)  # nothing to draw on the image
    assert steps_table(analysis) == []


def analysis_input(viewer: Viewer, path: Path):
    from dermogaze.data.images import load_user_image

    return load_user_image(path, viewer.image_size, viewer.mean, viewer.std)[0].unsqueeze(0)


def test_file_names_are_shown_as_text(viewer, lesion_jpg, tmp_path):
    from dermogaze.apps.serve.page import _status, diagnosis_html

    odd = tmp_path / "<b>lesion & co.jpg"
    odd.write_bytes(lesion_jpg.read_bytes())
    assert "Image: &lt;b&gt;lesion &amp; co (64×48 px)" in diagnosis_html(viewer.analyse_file(odd))
    assert _status("error", "<script>x</script>.png: not an image") == (
        '<span class="dg-error">&lt;script&gt;x&lt;/script&gt;.png: not an image</span>')


def test_structure_names_read_as_words():
    assert structure_label("pigment_network") == "pigment network"
    assert structure_label("milia_like_cyst") == "milia-like cyst"
    assert structure_label(None) == "—"


def test_launch_on_a_taken_port_is_one_clear_error(viewer):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(DermogazeError, match=f"cannot serve on 127.0.0.1:{port}"):
            launch(viewer, port=port, prevent_thread_lock=True, quiet=True)


@pytest.mark.parametrize("failures", [1, 3])
def test_a_server_too_slow_to_start_is_tried_again_then_one_clear_error(viewer, monkeypatch, failures):
    """Gradio gives its server thread 5 s: a busy machine's miss is retried, up to START_ATTEMPTS starts in all."""
    import gradio
    from gradio.exceptions import ServerFailedToStartError

    from dermogaze.apps.serve.page import START_ATTEMPTS

    real, calls = gradio.Blocks.launch, []

    def slow_start(self, *args, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise ServerFailedToStartError("Server failed to start. Please check that the port is available.")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(gradio.Blocks, "launch", slow_start)
    port = free_port()
    if failures < START_ATTEMPTS:
        app = launch(viewer, port=port, prevent_thread_lock=True, quiet=True)
        try:
            assert len(calls) == failures + 1
            with urllib.request.urlopen(app.local_url, timeout=60) as response:
                assert response.status == 200
        finally:
            app.close()
    else:
        with pytest.raises(DermogazeError, match=f"on 127.0.0.1:{port} did not start within Gradio's 5 s, 3 times"):
            launch(viewer, port=port, prevent_thread_lock=True, quiet=True)
        assert len(calls) == START_ATTEMPTS

def test_cli_serve_refuses_a_missing_checkpoint(tmp_path, capsys):
    from dermogaze.cli import main

    assert main(["serve", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dermogaze: error: checkpoint {tmp_path / 'none.pt'} does not exist"]


# ----------------------------------------------------------------------------------------------
# What the server takes and holds
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("values", "message"), [
    ([0], "there is no gaze 0: this model makes 2 gazes, numbered 1 to 2"),
    ([3], "there is no gaze 3: this model makes 2 gazes, numbered 1 to 2"),
    ([2.0], "gaze 2.0 is not a gaze number: the gazes are numbered 1 to 2"),
    ([False], "gaze False is not a gaze number: the gazes are numbered 1 to 2"),
    (["2 "], "gaze '2 ' is not a gaze number: the gazes are numbered 1 to 2"),
    ([2, "2"], "gaze 2 is listed twice: list each gaze to keep once"),
    ("12", "the gazes to keep are a list of gaze numbers from 1 to 2 (e.g. [1, 2]), not '12'"),
])
def test_gaze_numbers_refuse_what_is_not_a_distinct_gaze(values, message):
    with pytest.raises(DermogazeError) as info:
        gaze_numbers(values, 2)
    assert str(info.value) == message


def test_gaze_numbers_take_ints_and_their_digits_in_the_order_given():
    assert gaze_numbers([2, "1"], 2) == [2, 1]
    assert gaze_numbers((), 2) == []
    with pytest.raises(DermogazeError, match="^this model has no gazes to switch off$"):
        gaze_numbers([], 0)


def test_an_image_over_the_viewer_limit_is_refused_from_its_header(viewer, tmp_path, monkeypatch):
    import dermogaze.apps.serve.session as session

    decoded = []
    monkeypatch.setattr(session, "load_user_image", lambda *a, **k: decoded.append(a) or None)
    side = int(MAX_UPLOAD_PIXELS**0.5) + 1
    with pytest.raises(DermogazeError) as info:
        viewer.analyse_file(png_claiming(tmp_path / "wide.png", side, side))
    assert str(info.value) == (f"wide.png: the image is {side}×{side} = {side * side:,} pixels; the viewer analyses "
                               f"images of at most {MAX_UPLOAD_PIXELS:,} pixels: give a reduced copy")
    assert decoded == []  # refused before a pixel was decoded


def test_messages_name_the_file_not_the_servers_folder(viewer, tmp_path):
    folder = tmp_path / "deep" / "server" / "folder"
    folder.mkdir(parents=True)
    (folder / "notes.jpg").write_text("not a picture")
    with pytest.raises(DermogazeError) as info:
        viewer.analyse_file(folder / "notes.jpg")
    assert str(info.value).startswith("notes.jpg: not a readable image") and str(folder) not in str(info.value)


def test_only_the_newest_full_size_images_are_held(viewer, lesion_jpg, monkeypatch):
    first, second = viewer.analyse_file(lesion_jpg), viewer.analyse_file(lesion_jpg)
    monkeypatch.setattr(viewer.originals, "budget", 2 * first.explanation.image.nbytes)  # room for two
    third = viewer.analyse_file(lesion_jpg)
    assert first.explanation.image is None  # let go: the oldest beyond the budget
    assert second.explanation.image is not None and third.explanation.image is not None
    with pytest.raises(DermogazeError, match="^the full-size copy of .* is no longer held .*: analyse the image again"):
        viewer.save_files(first)
    assert viewer.intervene(first, [1]) == pytest.approx(first.ablation[1], abs=1e-6)  # the interventions still work
    assert len(viewer.save_files(third)) == 3


def test_uploads_land_in_the_viewers_folder_and_bodies_over_the_limit_are_refused(server, viewer, lesion_jpg):
    import urllib.error
    import urllib.request

    from dermogaze.apps.serve.page import MAX_REQUEST_BYTES

    client = Client(server, verbose=False, download_files=False)
    analyse(client, lesion_jpg)
    assert any(p.name == lesion_jpg.name for p in viewer.folder.gradio.rglob("*"))  # GRADIO_TEMP_DIR is the viewer's
    body = b"[" + b"1," * MAX_REQUEST_BYTES + b"1]"
    request = urllib.request.Request(server.rstrip("/") + "/gradio_api/call/intervene", data=body,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=60)
    assert info.value.code == 413
    message = json.loads(info.value.read())["detail"]
    assert message == "a request of 2.0 MB is above the viewer's limit of 1.0 MB"


def test_a_server_folder_is_locked_while_open_and_gone_when_closed(tmp_path):
    folder = ServerFolder(tmp_path)
    assert folder.path.parent == tmp_path and folder.path.name.startswith(PREFIX)
    assert {p.name for p in folder.path.iterdir()} == {LOCK_NAME, "gradio", "pictures", "downloads"}
    (folder.gradio / "upload.jpg").write_bytes(b"x")
    assert remove_stale(tmp_path) == []  # held by this process's lock
    folder.close()
    assert not folder.path.exists() and folder.closed
    folder.close()  # idempotent


def test_stale_server_folders_are_removed_and_others_left(tmp_path):
    dead = tmp_path / f"{PREFIX}dead"
    (dead / "gradio").mkdir(parents=True)
    (dead / LOCK_NAME).write_text("12345\n")  # its process is gone: nobody holds the lock
    unlocked = tmp_path / f"{PREFIX}starting"  # no lock file yet: a server being created, or not ours
    unlocked.mkdir()
    other = tmp_path / "someone-elses"
    other.mkdir()
    live = ServerFolder(tmp_path)
    try:
        assert not dead.exists()
        assert unlocked.is_dir() and other.is_dir() and live.path.is_dir()
    finally:
        live.close()



@pytest.fixture(scope="module")
def synthetic_checkpoint(crafted_gaze_checkpoint, pipeline_cache, tmp_path_factory) -> Path:
    """:func:`crafted_gaze_checkpoint` as a model of :func:`pipeline_cache` (synthetic) with its fitted
    out-of-distribution score (no training: the session's trained run is left to the modules that train alike)."""
    from dermogaze.data.cache import load_info
    from dermogaze.data.provenance import training_collection
    from dermogaze.training.checkpoint import load_checkpoint, save_checkpoint
    from dermogaze.training.ood import fit_checkpoint_ood

    ckpt = {k: v for k, v in load_checkpoint(crafted_gaze_checkpoint).items() if k != "path"}
    ckpt["training_data"] = training_collection(pipeline_cache, load_info(pipeline_cache))
    path = save_checkpoint(tmp_path_factory.mktemp("synthetic") / "best.pt", ckpt)
    fit_checkpoint_ood(path, pipeline_cache, device="cpu", progress=False)
    return path


def test_the_page_says_what_the_model_was_trained_on_and_how_far_an_image_lies(synthetic_checkpoint, pipeline_cache,
                                                                               realdata_dir, lesion_jpg):
    from dermogaze.apps.serve.page import diagnosis_html, intro_markdown
    from dermogaze.data.provenance import DEMONSTRATION_NOTE, describe

    with Viewer(synthetic_checkpoint, pipeline_cache, device="cpu", amp="off") as viewer:
        assert viewer.training_data["kind"] == "synthetic" and viewer.ood is not None
        intro = intro_markdown(viewer)
        assert f"Trained on: {describe(viewer.training_data)}." in intro
        assert ("**Trained on synthetic images: this diagnosis is a demonstration** when it is given a "
                "photograph") in intro
        photo = viewer.analyse_file(realdata_dir / "ISIC_0000000_thumbnail.jpg")  # a real photograph
        text = diagnosis_html(photo)
        assert f'<div class="dg-note"><b>{DEMONSTRATION_NOTE}</b></div>' in text
        ood = photo.record["ood"]
        assert ood["threshold"] == viewer.ood.threshold
        assert (f"distance {ood['distance']:.2f} to the training images' features, threshold "
                f"{ood['threshold']:.2f}") in text
        verdict = "out of distribution" if ood["out_of_distribution"] else "within the training images' distribution"
        assert verdict in text
        for analysis in (viewer.analyse_cached("test", 0), viewer.analyse_file(lesion_jpg)):  # synthetic images
            assert analysis.record["ood"] is not None
        assert DEMONSTRATION_NOTE not in diagnosis_html(viewer.analyse_cached("test", 0))  # its own collection


def test_a_checkpoint_without_a_score_says_so_on_the_page(viewer, lesion_jpg):
    from dermogaze.apps.serve.page import diagnosis_html, intro_markdown

    assert viewer.ood is None and viewer.training_data["kind"] == "unknown"  # the crafted checkpoint
    assert "Trained on: unknown (a checkpoint written before dermogaze recorded its training data)." in (
        intro_markdown(viewer))
    text = diagnosis_html(viewer.analyse_file(lesion_jpg))
    assert "Out-of-distribution score: not available" in text and "dg-note" not in text
