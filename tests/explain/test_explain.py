"""Explanations (docs/design.md §7): gaze geometry by hand, JSON records against a schema, figures written."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dermogaze.cli import main
from dermogaze.config import LossConfig, load_config
from dermogaze.data.images import load_user_image, read_image_file
from dermogaze.data.prepare import prepare
from dermogaze.errors import DataError
from dermogaze.explain.record import FULL_REGION, cache_region, explain_image, explain_record
from dermogaze.explain.run import output_stems, run_explain, safe_name, save_explanation, summary_line
from dermogaze.metrics.explanation import gaze_points
from dermogaze.models import build_model
from dermogaze.structures import STRUCTURES
from dermogaze.training import train

REALDATA = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"
THUMBNAIL = REALDATA / "ISIC_0000000_thumbnail.jpg"

# ----------------------------------------------------------------------------------------------
# A small JSON-schema check (keys and types), no dependency
# ----------------------------------------------------------------------------------------------

NUM = (int, float)
OPT_NUM = (int, float, type(None))
OPT_STR = (str, type(None))
OPT_BOOL = (bool, type(None))

RECORD_SCHEMA = {
    "image_id": str,
    "image_path": OPT_STR,
    "image_size": {"width": int, "height": int},
    "input_region": {"x0": NUM, "y0": NUM, "x1": NUM, "y1": NUM},
    "melanoma_probability": NUM,
    "prediction": str,
    "threshold": NUM,
    "ground_truth": (type(None), {"diagnosis": str, "label": int, "prediction_correct": bool,
                                  "structures_present": (list, type(None))}),
    "n_steps": int,
    "steps": [
        {
            "step": int,
            "gaze": (type(None), {"x": int, "y": int}),
            "attention": OPT_NUM,
            "attention_vs_uniform": OPT_NUM,
            "structure": OPT_STR,
            "structure_probability": OPT_NUM,
            "structure_probabilities": (type(None), dict),
            "mask_area_fraction": OPT_NUM,
            "mask_area_pixels": (int, type(None)),
            "gt_structure": OPT_STR,
            "structure_correct": OPT_BOOL,
            "matched_structure": OPT_STR,
            "pointing_hit": OPT_BOOL,
            "relevance_mass": OPT_NUM,
        }
    ],
    "training_data": (type(None), {"name": str, "source": OPT_STR, "kind": str, "structure_set": OPT_STR,
                                   "structures": (list, type(None)), "size": (dict, type(None)),
                                   "fingerprint": OPT_STR}),
    "ood": (type(None), {"distance": NUM, "threshold": NUM, "out_of_distribution": bool}),
    "notes": [str],
}


def check_schema(value, schema, where="record"):
    """Raise AssertionError where ``value`` does not follow ``schema``.

    A schema is a type (or tuple of types and sub-schemas: any may match), a dict (exactly these
    keys, each checked), or a one-element list (a list whose items follow the element schema).
    ``bool`` never passes for ``int``/``float``.
    """
    if isinstance(schema, dict):
        assert isinstance(value, dict), f"{where}: expected an object, got {type(value).__name__}"
        assert set(value) == set(schema), f"{where}: keys {sorted(value)} != {sorted(schema)}"
        for key, sub in schema.items():
            check_schema(value[key], sub, f"{where}.{key}")
        return
    if isinstance(schema, list):
        assert isinstance(value, list), f"{where}: expected a list"
        for k, item in enumerate(value):
            check_schema(item, schema[0], f"{where}[{k}]")
        return
    options = schema if isinstance(schema, tuple) else (schema,)
    errors = []
    for option in options:
        if isinstance(option, (dict, list)):
            try:
                check_schema(value, option, where)
                return
            except AssertionError as exc:
                errors.append(str(exc))
        elif isinstance(value, option) and not (isinstance(value, bool) and option in (int, float)):
            return
    raise AssertionError(f"{where}: {value!r} matches none of {options} {errors}")


def validate_record(rec):
    """Schema, strict-JSON round trip and the internal consistency of a record."""
    extra = {"files": dict} if "files" in rec else {}
    check_schema(rec, {**RECORD_SCHEMA, **extra})
    assert json.loads(json.dumps(rec, allow_nan=False)) == rec
    assert len(rec["steps"]) == rec["n_steps"]
    w, h = rec["image_size"]["width"], rec["image_size"]["height"]
    for s in rec["steps"]:
        if s["gaze"] is not None:
            assert 0 <= s["gaze"]["x"] < w and 0 <= s["gaze"]["y"] < h, (s["gaze"], w, h)
        if s["structure"] is not None:
            assert s["structure"] in STRUCTURES and 0.0 <= s["structure_probability"] <= 1.0
        if s["mask_area_fraction"] is not None:
            assert 0.0 <= s["mask_area_fraction"] <= 1.0
    assert 0.0 <= rec["melanoma_probability"] <= 1.0


def test_schema_check_can_fail():
    with pytest.raises(AssertionError, match="keys"):
        check_schema({"a": 1}, {"a": int, "b": int})
    with pytest.raises(AssertionError, match="matches none"):
        check_schema({"x": True}, {"x": int})


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


def one_hot_attention(cells, h=4, w=4):
    att = np.full((len(cells), h, w), 0.01)
    for t, (i, j) in enumerate(cells):
        att[t, i, j] = 0.5
    return att


def test_gaze_points_hand_computed_whole_image():
    att = one_hot_attention([(1, 2), (3, 0)])
    # image 200 wide, 100 high; cell (row 1, col 2) of 4×4 has its center at fractions
    # (x, y) = (2.5/4, 1.5/4) → pixel (floor(125.0), floor(37.5)) = (125, 37);
    # cell (3, 0): (0.5/4 · 200, 3.5/4 · 100) = (25.0, 87.5) → (25, 87)
    assert gaze_points(att, (100, 200)) == [(125, 37), (25, 87)]
    assert gaze_points(torch.from_numpy(att), (100, 200)) == [(125, 37), (25, 87)]


def test_gaze_points_in_cache_image_with_center_crop():
    region = cache_region(256, 224)
    assert region == (16 / 256, 16 / 256, 240 / 256, 240 / 256)  # the 224 center crop starts at 16
    # 4×4 cells over the 224 crop are 56 px: cell (1, 2) center = (16 + 2.5·56, 16 + 1.5·56) = (156, 100)
    assert gaze_points(one_hot_attention([(1, 2)]), (256, 256), region) == [(156, 100)]


def test_gaze_ties_go_to_first_cell():
    uniform = np.full((1, 4, 4), 1 / 16)  # the first map of an untrained model (V_a = 0)
    assert gaze_points(uniform, (100, 200)) == [(25, 12)]  # cell (0, 0): (0.5/4·200, 0.5/4·100)


@pytest.mark.parametrize("hw", [(251, 333), (250, 250), (333, 251), (7, 5), (1, 1)])
def test_every_cell_maps_inside_odd_images(hw):
    h = w = 28  # 224 / 8
    cells = [(i, j) for i in range(h) for j in range(w)]
    points = gaze_points(one_hot_attention(cells, h, w), hw)
    xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    assert xs.min() >= 0 and xs.max() < hw[1] and ys.min() >= 0 and ys.max() < hw[0]
    if min(hw) >= 28:  # large enough: each gaze lies in its own cell's footprint
        i, j = np.array(cells).T
        np.testing.assert_array_equal(np.floor(ys * h / hw[0]), i)
        np.testing.assert_array_equal(np.floor(xs * w / hw[1]), j)


# ----------------------------------------------------------------------------------------------
# Image loading
# ----------------------------------------------------------------------------------------------


def test_load_user_image_modes_and_normalisation(tmp_path):
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]
    rgba = np.zeros((251, 333, 4), np.uint8)
    rgba[..., :3] = (10, 120, 250)
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.full((40, 70), 200, np.uint8), "L").save(tmp_path / "g.png")
    Image.fromarray(np.full((33, 21, 3), (30, 60, 90), np.uint8)).save(tmp_path / "c.jpg", quality=100)

    x, orig = load_user_image(tmp_path / "a.png", 32, mean, std)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and orig.shape == (251, 333, 3)
    expected = (np.array([10, 120, 250]) / 255 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(x.mean(dim=(1, 2)).numpy(), expected, atol=1e-5)  # opaque: colour unchanged
    x, orig = load_user_image(tmp_path / "g.png", 32, mean, std)
    assert orig.shape == (40, 70, 3) and (orig == 200).all()
    x, orig = load_user_image(tmp_path / "c.jpg", 64, mean, std)
    assert x.shape == (3, 64, 64) and orig.shape == (33, 21, 3)


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((5, 5, 4), np.uint8)  # fully transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    assert (read_image_file(tmp_path / "t.png") == 255).all()


def test_bad_image_files_name_the_file(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(DataError, match="notes.png: not a readable image"):
        load_user_image(bad, 32, [0.5] * 3, [0.2] * 3)
    with pytest.raises(DataError, match="missing.jpg: no such image file"):
        read_image_file(tmp_path / "missing.jpg")
    truncated = tmp_path / "cut.jpg"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "full.jpg")
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:200])
    with pytest.raises(DataError, match="cut.jpg"):
        read_image_file(truncated)


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------


def test_explain_record_hand_computed():
    s = 8
    gt = np.zeros((6, s, s), bool)
    gt[0, :, :4] = True  # lesion: left half
    gt[1, :, 4:] = True  # skin: right half
    masks = np.zeros((2, s, s))
    masks[0, :, :4] = 0.9  # step 1 covers the lesion: 32 of 64 px ≥ 0.5
    masks[1, :2, 4:] = 0.7  # step 2: 8 px of skin
    sprobs = np.array([[0.7, 0.1, 0.1, 0.05, 0.03, 0.02], [0.6, 0.2, 0.1, 0.05, 0.03, 0.02]])
    att = one_hot_attention([(1, 0), (0, 3)])  # 4×4 maps, maximum 0.5
    rec = explain_record(
        image_id="x", melanoma_prob=0.3, image_hw=(100, 200), attention=att, masks=masks, structure_probs=sprobs,
        gt_masks=gt, label=1,
    )
    validate_record(rec)
    s1, s2 = rec["steps"]
    assert s1["gaze"] == {"x": 25, "y": 37} and s2["gaze"] == {"x": 175, "y": 12}
    assert s1["attention"] == pytest.approx(0.5) and s1["attention_vs_uniform"] == pytest.approx(8.0)  # 0.5 · 16
    assert (s1["structure"], s2["structure"]) == ("lesion", "lesion")
    assert s1["structure_probability"] == pytest.approx(0.7)
    # areas: 32/64 = 0.5 of the input → 0.5 · 100 · 200 = 10000 px; 8/64 → 2500 px
    assert (s1["mask_area_fraction"], s1["mask_area_pixels"]) == (0.5, 10000)
    assert (s2["mask_area_fraction"], s2["mask_area_pixels"]) == (0.125, 2500)
    # GT pairing (highest soft IoU): step 1 → lesion (right), step 2 → skin (wrong)
    assert (s1["gt_structure"], s1["structure_correct"]) == ("lesion", True)
    assert (s2["gt_structure"], s2["structure_correct"]) == ("skin", False)
    # docs/design.md §6b: Hungarian matching step 1 ↔ lesion, step 2 ↔ skin; the peaks (cell (1, 0): pixel columns 0-1;
    # cell (0, 3): columns 6-7) lie on them; relevance = 0.5 + 7 · 0.01 (the other 7 cells of that half)
    assert (s1["matched_structure"], s1["pointing_hit"]) == ("lesion", True)
    assert (s2["matched_structure"], s2["pointing_hit"]) == ("skin", True)
    assert s1["relevance_mass"] == pytest.approx(0.57) and s2["relevance_mass"] == pytest.approx(0.57)
    moved = one_hot_attention([(1, 3), (0, 3)])  # step 1 now peaks on the skin: a miss for its lesion
    rec = explain_record(image_id="x", melanoma_prob=0.3, image_hw=(100, 200), attention=moved, masks=masks,
                         structure_probs=sprobs, gt_masks=gt, label=1)
    assert rec["steps"][0]["pointing_hit"] is False and rec["steps"][0]["relevance_mass"] == pytest.approx(0.08)
    # the checkpoint's loss matches on the gazes too (loss.attention_matching): equal masks, so the gazes decide
    tie = np.full_like(masks, 0.6)
    swapped = one_hot_attention([(0, 3), (1, 0)])  # step 1 on the skin, step 2 on the lesion
    paper, trained = (explain_record(image_id="x", melanoma_prob=0.3, image_hw=(100, 200), attention=swapped,
                                     masks=tie, gt_masks=gt, loss=loss)["steps"]
                      for loss in (None, LossConfig(attention=1.0, attention_matching=True)))
    assert [(s["matched_structure"], s["pointing_hit"]) for s in paper] == [("lesion", False), ("skin", False)]
    assert [(s["matched_structure"], s["pointing_hit"]) for s in trained] == [("skin", True), ("lesion", True)]
    assert rec["prediction"] == "benign"
    assert rec["ground_truth"] == {"diagnosis": "melanoma", "label": 1, "prediction_correct": False,
                                   "structures_present": ["lesion", "skin"]}
    assert rec["input_region"] == {"x0": 0.0, "y0": 0.0, "x1": 200.0, "y1": 100.0}


def test_explain_record_without_attention_or_decoder():
    rec = explain_record(image_id="v", melanoma_prob=0.8, image_hw=(10, 10))
    validate_record(rec)
    assert rec["n_steps"] == 0 and rec["ground_truth"] is None and rec["prediction"] == "melanoma"
    rec = explain_record(image_id="a", melanoma_prob=0.8, image_hw=(10, 12), attention=np.ones((3, 2, 2)) / 4)
    validate_record(rec)
    assert rec["n_steps"] == 3 and rec["steps"][0]["structure"] is None and rec["steps"][0]["mask_area_pixels"] is None
    assert rec["steps"][0]["pointing_hit"] is None and rec["steps"][0]["matched_structure"] is None


# ----------------------------------------------------------------------------------------------
# With a (tiny, untrained) model: files written
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = build_model("deco_gap_3", width=0.125, image_size=32, steps=3)
    with torch.no_grad():  # give the attention a preference so the gazes differ between steps
        for p in model.parameters():
            if p.dim() > 1:
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _odd_png(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "user image.png"  # a space in the name
    Image.fromarray(rng.integers(0, 256, (251, 333, 4), dtype=np.uint8), "RGBA").save(path)
    return path


def _odd_jpeg(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "portrait.JPG"
    Image.fromarray(rng.integers(0, 256, (333, 251, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def _image_inputs(tmp_path, *, real: bool):
    """Odd-sized PNG (333×251 RGBA) plus, with ``real``, the real 250×250 ISIC JPEG (else an odd JPEG)."""
    if real and THUMBNAIL.is_file():
        return [_odd_png(tmp_path), THUMBNAIL]
    return [_odd_png(tmp_path), _odd_jpeg(tmp_path)]


def test_explain_image_writes_valid_json_and_figures(tmp_path, tiny_model):
    mean, std = [0.6, 0.5, 0.4], [0.2, 0.2, 0.2]
    for path in _image_inputs(tmp_path, real=False):
        x, orig = load_user_image(path, 32, mean, std)
        expl = explain_image(tiny_model, x, orig, image_id=path.stem, image_path=str(path))
        files = save_explanation(expl, tmp_path / "out")
        assert set(files) == {"json", "gazes", "masks"}
        for f in files.values():
            assert f.is_file() and f.stat().st_size > 1000
        assert Image.open(files["gazes"]).size[0] > 500
        rec = json.loads(files["json"].read_text())
        validate_record(rec)
        assert rec["image_size"] == {"width": orig.shape[1], "height": orig.shape[0]}
        assert rec["n_steps"] == 3 and rec["files"]["gazes"] == files["gazes"].name
        with torch.no_grad():
            p = float(tiny_model(x[None]).logits.softmax(-1)[0, 1])
        assert rec["melanoma_probability"] == pytest.approx(p, abs=1e-6)


def test_explain_image_with_ground_truth_in_cache_coordinates(tmp_path, tiny_model):
    cache = np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8)  # a 40 px "cache" image
    region = cache_region(40, 32)
    crop = torch.from_numpy(cache[4:36, 4:36].astype(np.float32) / 255).permute(2, 0, 1)
    gt = np.zeros((6, 32, 32), bool)
    gt[0, 8:24, 8:24] = True
    gt[1] = ~gt[0]
    expl = explain_image(tiny_model, crop, cache, image_id="ISIC_1/x", region=region, gt_masks=gt, label=0)
    files = save_explanation(expl, tmp_path)
    assert files["json"].name == "ISIC_1_x.json" and files["masks"].is_file()
    rec = json.loads(files["json"].read_text())
    validate_record(rec)
    assert rec["input_region"] == {"x0": 4.0, "y0": 4.0, "x1": 36.0, "y1": 36.0}
    for s in rec["steps"]:
        assert 4 <= s["gaze"]["x"] < 36 and 4 <= s["gaze"]["y"] < 36  # inside the crop the network saw
        assert s["gt_structure"] in ("lesion", "skin") and isinstance(s["structure_correct"], bool)


@pytest.mark.parametrize("variant", ["vgg_attconvlstm_gap", "vgg_gap"])
def test_variants_without_decoder_or_attention(tmp_path, variant):
    model = build_model(variant, width=0.125, image_size=32, steps=2).eval()
    x, orig = load_user_image(_odd_png(tmp_path), 32, [0.5] * 3, [0.25] * 3)
    expl = explain_image(model, x, orig, image_id="u")
    files = save_explanation(expl, tmp_path / "o")
    rec = json.loads(files["json"].read_text())
    validate_record(rec)
    assert "masks" not in files
    if variant == "vgg_gap":  # no attention: no gazes to show
        assert rec["n_steps"] == 0 and set(files) == {"json"}
    else:
        assert rec["n_steps"] == 2 and rec["steps"][0]["structure"] is None and files["gazes"].is_file()


def test_full_region_default():
    assert FULL_REGION == (0.0, 0.0, 1.0, 1.0)
    assert math.isclose(cache_region(256, 256)[2], 1.0)


# ----------------------------------------------------------------------------------------------
# End to end: checkpoint → `dermogaze explain` (image files and a prepared split)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny deco_gap_3 trained for one epoch on the hand-crafted collection (conftest), cache at 40 px."""
    from conftest import write_tiny_isic

    root = tmp_path_factory.mktemp("explain_e2e")
    prepare(write_tiny_isic(root / "isic"), root / "cache", size=40, progress=False)
    cfg = load_config("tiny", [f"data.cache={root / 'cache'}", "train.epochs=1"])
    result = train(cfg, root / "run", progress=False)
    return root / "cache", Path(result["best"])


def test_cli_explain_image_files(tmp_path, trained_run, capsys):
    _, ckpt = trained_run
    inputs = _image_inputs(tmp_path, real=True)
    out = tmp_path / "explained"
    assert main(["explain", "--checkpoint", str(ckpt), *map(str, inputs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 explanation(s)" in printed
    for path in inputs:
        rec = json.loads((out / f"{path.stem.replace(' ', '_')}.json").read_text())
        validate_record(rec)
        w, h = Image.open(path).size
        assert rec["image_size"] == {"width": w, "height": h} and rec["image_path"] == str(path)
        assert rec["n_steps"] == 2 and rec["ground_truth"] is None
        for name in rec["files"].values():
            assert (out / name).is_file()
        assert set(rec["files"]) == {"gazes", "masks"}


def test_cli_explain_prepared_split_with_ground_truth(tmp_path, trained_run):
    cache, ckpt = trained_run
    out = tmp_path / "split"
    assert main(["explain", "--checkpoint", str(ckpt), "--data", str(cache), "--split", "val", "--out", str(out),
                 "--limit", "1"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["ISIC_0000011.json", "ISIC_0000011_gazes.png", "ISIC_0000011_masks.png"]
    rec = json.loads((out / "ISIC_0000011.json").read_text())
    validate_record(rec)
    assert rec["image_size"] == {"width": 40, "height": 40}  # the cache image
    assert rec["input_region"] == {"x0": 4.0, "y0": 4.0, "x1": 36.0, "y1": 36.0}  # its 32 px center crop
    assert rec["ground_truth"]["diagnosis"] == "melanoma"  # conftest: ISIC_0000011 is a melanoma
    assert {"lesion", "skin", "streaks"} <= set(rec["ground_truth"]["structures_present"])
    for s in rec["steps"]:
        assert 4 <= s["gaze"]["x"] < 36 and 4 <= s["gaze"]["y"] < 36
        assert s["gt_structure"] in rec["ground_truth"]["structures_present"]


def test_cli_explain_bad_input_is_one_clear_line(tmp_path, trained_run, capsys):
    cache, ckpt = trained_run
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    cases = [
        (["explain", "--checkpoint", str(ckpt), str(notes), "--out", str(tmp_path / "o")], "notes.txt: not a readable"),
        (["explain", "--checkpoint", str(ckpt), str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "o")],
         "nope.jpg: no such image file"),
        (["explain", "--checkpoint", str(ckpt), "--data", str(cache), "--split", "Test", "--out", str(tmp_path / "o")],
         "has no split 'Test'"),
        (["explain", "--checkpoint", str(ckpt), "--split", "test", "--out", str(tmp_path / "o")],
         "--split needs --data"),
        (["explain", "--checkpoint", str(tmp_path / "missing.pt"), str(notes), "--out", str(tmp_path / "o")],
         "missing.pt"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("dermogaze: error:") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()  # nothing written when the inputs are bad


# ----------------------------------------------------------------------------------------------
# Output names: unique after cleaning, so that no input's files overwrite another's
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids, stems",
    [
        (["a b", "a_b"], ["a_b", "a_b_2"]),  # safe_name maps both to a_b
        (["a_b", "a b", "a?b"], ["a_b", "a_b_2", "a_b_3"]),
        (["a", "a", "a_2"], ["a", "a_2", "a_2_2"]),  # a renamed stem never takes an input's own
        (["ISIC_1", "ISIC_2"], ["ISIC_1", "ISIC_2"]),  # nothing to rename
        (["A", "a"], ["A", "a"]),  # letter case is kept apart (case-sensitive file systems)
        ([".", ".."], ["image", "image_2"]),
    ],
)
def test_output_stems_are_unique_after_cleaning(ids, stems):
    assert output_stems(ids) == stems
    assert len(set(stems)) == len(stems)
    assert all(s == safe_name(s) for s in stems)


def test_cli_explain_inputs_whose_names_collide_are_all_written(tmp_path, trained_run, capsys, caplog):
    _, ckpt = trained_run
    (tmp_path / "other").mkdir()
    colours = {"a b.png": (200, 50, 50), "a_b.png": (50, 200, 50), "other/a b.png": (50, 50, 200)}
    for name, colour in colours.items():
        Image.fromarray(np.full((40, 48, 3), colour, np.uint8)).save(tmp_path / name)
    inputs = [str(tmp_path / name) for name in colours]
    out = tmp_path / "explained"
    assert main(["explain", "--checkpoint", str(ckpt), *inputs, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 explanation(s)" in printed
    assert "2 saved under another name so that none overwrites another" in printed
    assert f"a_b ({inputs[1]}) as a_b_2.json" in printed
    records = {stem: json.loads((out / f"{stem}.json").read_text()) for stem in ("a_b", "a_b_2", "a_b_3")}
    # each record keeps its original id and names its own source file and figures
    assert [r["image_id"] for r in records.values()] == ["a b", "a_b", "a b"]
    assert [r["image_path"] for r in records.values()] == inputs
    for stem, rec in records.items():
        validate_record(rec)
        assert rec["files"] == {"gazes": f"{stem}_gazes.png", "masks": f"{stem}_masks.png"}
    assert len(list(out.iterdir())) == 9  # three images × (JSON, gazes, masks): nothing overwritten
    renamed = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "a_b_" in r.getMessage()]
    assert len(renamed) == 2 and "writing it as a_b_2.json" in renamed[0], renamed


def test_cli_explain_a_split_named_twice_writes_every_image(tmp_path, trained_run, capsys):
    cache, ckpt = trained_run
    out = tmp_path / "twice"
    assert main(["explain", "--checkpoint", str(ckpt), "--data", str(cache), "val", "val", "--out", str(out),
                 "--no-progress"]) == 0
    assert "wrote 4 explanation(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.json")) == [
        "ISIC_0000011.json", "ISIC_0000011_2.json", "ISIC_0000012.json", "ISIC_0000012_2.json"]
    assert json.loads((out / "ISIC_0000011_2.json").read_text())["image_id"] == "ISIC_0000011"


# ----------------------------------------------------------------------------------------------
# What the model was trained on, and how far an image lies from it
# ----------------------------------------------------------------------------------------------


def test_a_model_trained_on_synthetic_images_says_so_on_a_real_photograph(pipeline_tiny_run, realdata_dir, tmp_path,
                                                                          capsys):
    from dermogaze.data.provenance import DEMONSTRATION_NOTE
    from dermogaze.metrics.ood import FeatureDistribution, pooled_features
    from dermogaze.training.checkpoint import load_checkpoint, model_from_checkpoint

    photo = realdata_dir / "ISIC_0000000_thumbnail.jpg"  # a real dermoscopic JPEG
    best = pipeline_tiny_run / "best.pt"
    out = tmp_path / "photo"
    assert main(["explain", "--checkpoint", str(best), str(photo), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    rec = json.loads((out / f"{photo.stem}.json").read_text())
    validate_record(rec)
    ckpt = load_checkpoint(best)
    assert rec["training_data"] == ckpt["training_data"] and rec["training_data"]["kind"] == "synthetic"
    assert rec["notes"][0] == DEMONSTRATION_NOTE
    assert f"\n  note: {DEMONSTRATION_NOTE}\n" in printed  # one plain line of its own
    # the score: the Mahalanobis distance of the pooled encoder output, against the checkpoint's threshold
    ood = FeatureDistribution.from_state(ckpt["ood"])
    x, _ = load_user_image(photo, 32, ckpt["mean"], ckpt["std"])
    with torch.no_grad():
        _, state = model_from_checkpoint(ckpt).forward_with_state(x[None])
    distance = float(ood.distance(pooled_features(state.x_prime))[0])
    assert rec["ood"]["distance"] == pytest.approx(distance, rel=1e-5)
    assert rec["ood"]["threshold"] == ood.threshold
    assert rec["ood"]["out_of_distribution"] == (distance > ood.threshold)
    assert f"OOD distance {rec['ood']['distance']:.2f}" in printed
    if rec["ood"]["out_of_distribution"]:
        assert rec["notes"][1].startswith("out of distribution") and "(out of distribution)" in printed


@pytest.mark.slow  # fits the out-of-distribution score on a collection
def test_a_synthetic_model_on_its_own_collection_is_no_demonstration(pipeline_tiny_run, pipeline_cache, tmp_path):
    records = run_explain(pipeline_tiny_run / "best.pt", ["test"], tmp_path / "split", data=pipeline_cache,
                          progress=False)
    assert len(records) == 8
    for rec in records:
        validate_record(rec)
        assert not any(n.startswith("trained on synthetic") for n in rec["notes"])
        assert rec["ood"] is not None and rec["ood"]["out_of_distribution"] == (
            rec["ood"]["distance"] > rec["ood"]["threshold"])
        assert len(rec["notes"]) == int(rec["ood"]["out_of_distribution"])  # only the out-of-distribution line


def test_a_checkpoint_without_training_data_explains_with_it_unknown(pipeline_tiny_run, tmp_path, capsys):
    from dermogaze.training.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(pipeline_tiny_run / "best.pt")
    old = save_checkpoint(tmp_path / "old.pt", {k: v for k, v in ckpt.items()
                                                 if k not in ("training_data", "ood", "path")})
    records = run_explain(old, [_odd_jpeg(tmp_path)], tmp_path / "out", progress=False)
    rec = records[0]
    validate_record(rec)
    assert rec["training_data"]["kind"] == "unknown" and rec["training_data"]["name"] == "unknown"
    assert rec["ood"] is None and rec["notes"] == []
    assert "OOD" not in summary_line(rec) and "note:" not in summary_line(rec)
