"""Scanpaths: MultiMatch against hand computations, the fixations CSV reader, `gaze compare`, and stability
under flips/rotations with models that are (and are not) equivariant by construction."""

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dermogaze.cli import main
from dermogaze.data.transforms import DIHEDRAL, dihedral_inverse, dihedral_view
from dermogaze.errors import DataError, DermogazeError
from dermogaze.explain.record import explain_record
from dermogaze.files import write_json
from dermogaze.metrics.scanpath import (
    SIMILARITIES,
    gaze_fixations,
    make_fixations,
    multimatch,
    read_fixations_csv,
    record_fixations,
    shape_similarity,
    view_stability,
)
from dermogaze.models import build_model
from dermogaze.models.output import GazeOutput

pytestmark = pytest.mark.usefixtures("one_thread")

# A 300×400 image: diagonal D = 500 px, so the normalised distances below are easy to follow.
SCREEN = (300, 400)
D = 500.0

# Three fixations each. Saccades u = (300, 0), (0, 400) and v = (240, 0), (0, 320). With two saccades per side the
# alignment is the diagonal, pairs (1, 1) and (2, 2): any other path adds a positive |u_i - v_j| to the same end.
A3 = make_fixations([0, 300, 300], [0, 0, 400], [0.2, 0.3, 0.4])
B3 = make_fixations([60, 300, 300], [80, 80, 400], [0.1, 0.3, 0.5])
B3_HAND = {
    "vector": 1 - np.median([60, 80]) / (2 * D),  # |u1 - v1| = 60, |u2 - v2| = 80
    "direction": 1.0,  # the same directions
    "length": 1 - np.median([60, 80]) / D,  # |300 - 240|, |400 - 320|
    "position": 1 - np.median([100, 80]) / D,  # |(0,0) - (60,80)| = 100, |(300,0) - (300,80)| = 80
    "duration": 1 - np.median([0.1 / 0.2, 0.0]),  # |d - d'| / max(d, d') of the saccades' start fixations
}


def _scanpath(points, durations=None):
    xs, ys = zip(*points, strict=True)
    return make_fixations(xs, ys, durations if durations is not None else [0.25] * len(points))


# ----------------------------------------------------------------------------------------------
# MultiMatch
# ----------------------------------------------------------------------------------------------


def test_identical_scanpaths_are_one_on_every_measure():
    path = _scanpath([(10, 20), (200, 60), (120, 300), (40, 380)], [0.2, 0.35, 0.1, 0.3])
    assert multimatch(path, path.copy(), SCREEN) == {name: 1.0 for name in SIMILARITIES}


def test_three_fixations_against_hand_computation():
    sims = multimatch(A3, B3, SCREEN)
    assert sims == pytest.approx(B3_HAND, abs=1e-12)
    assert sims["position"] == pytest.approx(0.82)
    assert shape_similarity(sims) == pytest.approx((0.93 + 1.0 + 0.86) / 3)


def test_unequal_lengths_with_the_alignment_by_hand():
    # Four fixations vs three: u = (100,0), (100,0), (0,100); v = (200,-30), (0,100).
    a = _scanpath([(0, 0), (100, 0), (200, 0), (200, 100)])
    b = _scanpath([(0, 30), (200, 0), (200, 100)])
    # |u_i - v_j|: row 1: 104.40, 141.42; row 2: 104.40, 141.42; row 3: 238.54, 0. The cheapest monotone path from
    # (1,1) to (3,2) goes down to (2,1) then diagonally to (3,2): 104.40 + 0 (through (2,2) it costs 141.42 + 0).
    pairs = [(0, 0), (1, 0), (2, 1)]
    position = [math.dist((a["start_x"][i], a["start_y"][i]), (b["start_x"][j], b["start_y"][j])) for i, j in pairs]
    assert position == pytest.approx([30.0, math.hypot(100, 30), 0.0])
    sims = multimatch(a, b, SCREEN)
    assert sims["position"] == pytest.approx(1 - 30 / D)  # median 30
    assert sims["vector"] == pytest.approx(1 - math.hypot(100, 30) / (2 * D))  # 104.40, 104.40, 0
    assert sims["length"] == pytest.approx(1 - (math.hypot(200, 30) - 100) / D)  # |100 - 202.24| twice, then 0


def test_a_mirrored_scanpath_lowers_direction():
    # Mirror x → W - x: u1 = (300, 0) becomes (-300, 0) (angle π), u2 = (0, 400) stays (angle 0): median π/2.
    mirrored = A3.copy()
    mirrored["start_x"] = SCREEN[0] - A3["start_x"]
    sims = multimatch(A3, mirrored, SCREEN)
    assert sims["direction"] == pytest.approx(0.5)
    assert sims["length"] == pytest.approx(1.0)  # mirroring keeps lengths
    assert sims["position"] == pytest.approx(1 - 300 / D)  # each start point moves by 300 px

    generic = _scanpath([(10, 20), (200, 60), (120, 300), (40, 380)])
    flipped = generic.copy()
    flipped["start_x"] = SCREEN[0] - generic["start_x"]
    assert multimatch(generic, flipped, SCREEN)["direction"] < 1.0


@pytest.mark.parametrize("n", [0, 1, 2])
def test_fewer_than_three_fixations_is_an_error(n):
    short = A3[:n]
    with pytest.raises(DermogazeError, match=f"at least 3 fixations.*human has {n}"):
        multimatch(A3, short, SCREEN, names=("model", "human"))
    with pytest.raises(DermogazeError, match=f"model has {n}"):
        multimatch(short, A3, SCREEN, names=("model", "human"))


def test_gaze_durations_are_proportional_to_the_attention_peak():
    path = gaze_fixations([(1, 2), (3, 4), (5, 6), (7, 8)], [0.2, 0.4, 0.1, 0.3], mean_duration_ms=250)
    # peak / sum(peaks) · T · mean = peak · 4 · 0.25 s
    assert path["duration"] == pytest.approx([0.2, 0.4, 0.1, 0.3])
    assert list(path["start_x"]) == [1, 3, 5, 7] and list(path["start_y"]) == [2, 4, 6, 8]


# ----------------------------------------------------------------------------------------------
# The fixations CSV
# ----------------------------------------------------------------------------------------------


def test_fixations_csv_with_extra_columns_and_spaces(tmp_path):
    path = tmp_path / "fix.csv"
    path.write_text("\ufefftimestamp, X , y,Duration_MS ,pupil\n0, 12.5 ,40,250,3\n\n300,100, 7 , 180.5,3\n")
    fix = read_fixations_csv(path, image_size=SCREEN)
    assert fix["start_x"].tolist() == [12.5, 100.0]
    assert fix["start_y"].tolist() == [40.0, 7.0]
    assert fix["duration"] == pytest.approx([0.25, 0.1805])  # seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x,y,duration_ms\n1,2,3\n4,five,6\n", "line 3: y 'five' is not a number"),
        ("x,y,duration_ms\n1,2,3\n4,5,\n", "line 3: duration_ms '' is not a number"),
        ("x,y,duration_ms\n1,2,nan\n", "line 2: duration_ms 'nan' is not a finite number"),
        ("x,y,duration_ms\n1,2,0\n", "line 2: duration_ms 0 is not positive"),
        ("x,y,duration_ms\n1,2,3\n4,5\n", "line 3: duration_ms '' is not a number"),
        ("x,y,duration_ms\n1,2,3\n4,5,6,7\n", "line 3: 4 values, the header has 3 columns"),
        ("x,y,x,duration_ms\n1,2,3,4\n", "line 1: column 'x' appears twice"),
        ("x,y,duration_ms\n1,2,3\n1200,5,3\n", "line 3: fixation \\(1200, 5\\) lies outside the image"),
        ("x\ty\tduration_ms\n1\t2\t3\n", "line 1: expected a header with columns x, y, duration_ms"),
        ("x,y,dur\n1,2,3\n", "missing duration_ms"),
        ("", "found nothing"),
        ("x,y,duration_ms\n", "no fixations"),
    ],
)
def test_a_bad_fixations_csv_is_one_error_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=f"^{path}: .*{message}"):
        read_fixations_csv(path, image_size=SCREEN)


def test_a_scanpath_longer_than_the_limit_is_refused_before_it_is_compared(tmp_path, monkeypatch):
    from dermogaze.metrics import scanpath

    path = tmp_path / "samples.csv"
    path.write_text("\ufeffx,y,duration_ms\n" + "".join(f"{k},{k},100\n" for k in range(6)))
    monkeypatch.setattr(scanpath, "MAX_FIXATIONS", 6)
    assert len(read_fixations_csv(path, image_size=SCREEN)) == 6  # at the limit, a byte-order mark first
    monkeypatch.setattr(scanpath, "MAX_FIXATIONS", 5)
    with pytest.raises(DataError, match=f"^{path}: 6 fixations, more than the 5 MultiMatch compares"):
        read_fixations_csv(path, image_size=SCREEN)


def test_an_unreadable_fixations_file_is_named(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"x,y,duration_ms\n1,2,\xff\n")
    with pytest.raises(DataError, match=f"^{path}: unreadable fixations CSV"):
        read_fixations_csv(path)


# ----------------------------------------------------------------------------------------------
# gaze compare
# ----------------------------------------------------------------------------------------------


def _record(points, peaks, size=SCREEN):
    return {
        "image_id": "crafted",
        "image_size": {"width": size[0], "height": size[1]},
        "steps": [{"step": t + 1, "gaze": {"x": x, "y": y}, "attention": a}
                  for t, ((x, y), a) in enumerate(zip(points, peaks, strict=True))],
    }


def test_gaze_compare_on_a_crafted_record_and_csv(tmp_path, capsys):
    # The model's gazes are A3; peaks 2:3:4 with the human mean of 300 ms give durations 0.2, 0.3, 0.4 s, as in A3.
    record = write_json(_record([(0, 0), (300, 0), (300, 400)], [0.02, 0.03, 0.04]), tmp_path / "crafted.json")
    csv_path = tmp_path / "human.csv"
    csv_path.write_text("x,y,duration_ms\n60,80,100\n300,80,300\n300,400,500\n")

    assert main(["gaze", "compare", str(record), str(csv_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["similarities"] == pytest.approx(B3_HAND, abs=1e-12)
    assert result["mean_fixation_ms"] == pytest.approx(300)
    assert (result["model_fixations"], result["human_fixations"], result["image_size"]) == (3, 3, [300, 400])

    assert main(["gaze", "compare", str(record), str(csv_path)]) == 0
    out = capsys.readouterr().out
    for name in SIMILARITIES:
        assert f"{name:<10} {B3_HAND[name]:.3f}" in out


def test_gaze_compare_reads_the_records_of_explain(tmp_path, capsys):
    # One-hot attention maps on a 4×4 grid over a 400×300 (W×H) image: cell (i, j) → pixel floor((j + .5)·100),
    # floor((i + .5)·75).
    cells = [(0, 0), (1, 3), (3, 2), (2, 0)]
    attention = np.full((4, 4, 4), 0.2 / 15)
    for t, (i, j) in enumerate(cells):
        attention[t, i, j] = 0.8
    record = explain_record(image_id="real", melanoma_prob=0.3, image_hw=(300, 400), attention=attention)
    fix = record_fixations(record)
    assert list(zip(fix["start_x"], fix["start_y"], strict=True)) == [(50, 37), (350, 112), (250, 262), (50, 187)]

    path = write_json(record, tmp_path / "real.json")
    csv_path = tmp_path / "same.csv"
    csv_path.write_text("x,y,duration_ms\n" + "".join(f"{x},{y},300\n" for x, y in zip(fix["start_x"], fix["start_y"],
                                                                                         strict=True)))
    assert main(["gaze", "compare", str(path), str(csv_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["similarities"] == {name: 1.0 for name in SIMILARITIES}


@pytest.mark.parametrize(
    ("record", "csv_text", "message"),
    [
        (_record([(0, 0), (10, 10)], [0.5, 0.5]), "x,y,duration_ms\n1,1,100\n2,2,100\n3,3,100\n",
         "at least 3 fixations .* the model's gaze sequence in .*rec.json has 2"),
        (_record([(0, 0), (10, 10), (20, 5)], [0.5, 0.3, 0.2]), "x,y,duration_ms\n1,1,100\n2,2,100\n",
         "the human scanpath in .*fix.csv has 2"),
        (_record([(0, 0), (10, 10), (20, 5)], [0.5, 0.3, 0.2]), "x,y,duration_ms\n1,1,100\n2,2,x\n",
         "fix.csv: line 3: duration_ms 'x' is not a number"),
        ({"image_id": "g", "image_size": {"width": 9, "height": 9}, "steps": [{"gaze": None}] * 3},
         "x,y,duration_ms\n1,1,100\n", "rec.json: the record has no gazes"),
        ({"steps": 3}, "x,y,duration_ms\n1,1,100\n", "rec.json: not an explanation record"),
    ],
)
def test_gaze_compare_errors_are_one_line(tmp_path, capsys, record, csv_text, message):
    rec_path = write_json(record, tmp_path / "rec.json")
    csv_path = tmp_path / "fix.csv"
    csv_path.write_text(csv_text)
    assert main(["gaze", "compare", str(rec_path), str(csv_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dermogaze: error: ")
    assert re.search(message, err), err


def test_gaze_compare_names_an_unreadable_record(tmp_path, capsys):
    rec_path = tmp_path / "rec.json"
    rec_path.write_text("{not json")
    csv_path = tmp_path / "fix.csv"
    csv_path.write_text("x,y,duration_ms\n1,1,100\n")
    assert main(["gaze", "compare", str(rec_path), str(csv_path)]) == 2
    assert f"{rec_path}: not an explanation record of 'dermogaze explain' (not JSON: " in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Stability
# ----------------------------------------------------------------------------------------------


def test_the_dihedral_group():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    assert dihedral_view(x, 1, False).tolist() == [[1, 3], [0, 2]]  # counter-clockwise
    assert dihedral_view(x, 0, True).tolist() == [[1, 0], [3, 2]]  # left-right mirror
    assert dihedral_view(x, 1, True).tolist() == [[3, 1], [2, 0]]  # turn, then mirror
    image = torch.randn(2, 3, 8, 8)
    views = [dihedral_view(image, k, flip) for k, flip in DIHEDRAL]
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    for v, (k, flip) in zip(views, DIHEDRAL, strict=True):
        assert torch.equal(dihedral_inverse(v, k, flip), image)


class PooledChannelGazer(nn.Module):
    """Step ``t`` attends to the brightest 8×8 block of channel ``t``: pointwise maps and aligned pooling, so the
    attention is equivariant to flips/rotations of the square; the diagnosis is the image mean, invariant.

    ``bias`` (an ``(h, w)`` grid added to the attention logits) and ``corner`` (diagnosis from the top-left
    quadrant) break the symmetry."""

    def __init__(self, steps: int = 3, bias: torch.Tensor | None = None, corner: bool = False):
        super().__init__()
        self.steps, self.bias, self.corner = steps, bias, corner

    def forward(self, images: torch.Tensor) -> GazeOutput:
        b, _, s, _ = images.shape
        pooled = F.avg_pool2d(images, 8)  # (B, 3, h, w)
        scores = 4.0 * pooled[:, : self.steps] + (0 if self.bias is None else self.bias)  # (B, T, h, w)
        attention = scores.flatten(2).softmax(-1).view_as(scores)  # (B, T, h, w), sums to 1
        quadrant = images[:, :, : s // 2, : s // 2] if self.corner else images
        margin = quadrant.mean(dim=(1, 2, 3))  # (B,)
        logits = torch.stack([torch.zeros_like(margin), margin], dim=1)  # (B, 2)
        return GazeOutput(logits=logits, attention=attention)


def test_stability_is_one_for_an_equivariant_model():
    images = torch.randn(3, 3, 32, 32)
    result = view_stability(PooledChannelGazer(), images)
    assert set(result) == {"position", "shape", "p_spread"}
    assert result["position"] == pytest.approx(np.ones(3), abs=1e-12)
    assert result["shape"] == pytest.approx(np.ones(3), abs=1e-12)
    assert result["p_spread"] == pytest.approx(np.zeros(3), abs=1e-6)  # summation order only


def test_stability_below_one_for_a_model_that_is_not_equivariant():
    ramp = torch.linspace(0, 6, 4).expand(4, 4)  # the attention prefers the right-hand column
    images = torch.randn(3, 3, 32, 32)
    result = view_stability(PooledChannelGazer(bias=ramp, corner=True), images)
    assert np.all(result["position"] < 1) and np.all(result["shape"] <= 1) and np.all(result["shape"] > 0)
    # The top-left quadrant of the 8 views is each quadrant of the image twice (turned or mirrored), so the spread
    # of P(melanoma) is sigmoid of the largest quadrant mean minus sigmoid of the smallest.
    quadrants = torch.stack([images[:, :, r:r + 16, c:c + 16].mean(dim=(1, 2, 3)) for r in (0, 16) for c in (0, 16)])
    expected = torch.sigmoid(quadrants.max(0).values) - torch.sigmoid(quadrants.min(0).values)
    assert result["p_spread"] == pytest.approx(expected.numpy(), abs=1e-6)
    assert np.all(result["p_spread"] > 0)


def _cell_back(i: int, j: int, k: int, flip: bool, n: int) -> tuple[int, int]:
    """Where cell ``(i, j)`` of view ``flip(rot90(x, k))`` lies in ``x`` (the mirror ``j → n-1-j`` undone first,
    then ``rot90``, which takes ``(i, j)`` to ``(n-1-j, i)``, undone k times)."""
    if flip:
        j = n - 1 - j
    for _ in range(k):
        i, j = j, n - 1 - i
    return i, j


def test_stability_maps_the_gazes_of_each_view_back():
    # Attention that ignores the image: sharp peaks at fixed cells of the view, whatever its orientation.
    cells = [(0, 1), (2, 3), (3, 0)]
    bias = torch.full((3, 4, 4), -30.0)
    for t, (i, j) in enumerate(cells):
        bias[t, i, j] = 0.0
    model = PooledChannelGazer(steps=3, bias=bias)
    result = view_stability(model, torch.zeros(1, 3, 32, 32))

    def path(cells_of_view):
        return _scanpath([(8 * j + 4, 8 * i + 4) for i, j in cells_of_view])  # cell centres in the 32 px input

    original = path(cells)
    sims = [multimatch(original, path([_cell_back(i, j, k, flip, 4) for i, j in cells]), (32, 32))
            for k, flip in DIHEDRAL[1:]]
    assert result["position"][0] == pytest.approx(np.mean([s["position"] for s in sims]), abs=1e-12)
    assert result["shape"][0] == pytest.approx(np.mean([shape_similarity(s) for s in sims]), abs=1e-12)
    assert result["position"][0] < 1


@pytest.mark.parametrize("steps", [None, 2])
def test_stability_without_enough_gazes_is_nan_with_a_reason(steps):
    class NoGaze(PooledChannelGazer):
        def forward(self, images):
            out = super().forward(images)
            return GazeOutput(logits=out.logits, attention=None)

    model = NoGaze() if steps is None else PooledChannelGazer(steps=steps)
    result = view_stability(model, torch.randn(2, 3, 16, 16))
    assert np.isnan(result["position"]).all() and np.isnan(result["shape"]).all()
    assert result["p_spread"] == pytest.approx([0.0, 0.0], abs=1e-6)  # the diagnosis is still measured
    assert ("no attention maps" if steps is None else "makes 2") in str(result["reason"])


def test_stability_of_a_gaze_network_in_one_forward():
    model = build_model("deco_gap_3", width=0.125, image_size=32, steps=3).train()
    calls = []
    model.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape))
    result = view_stability(model, torch.randn(2, 3, 32, 32))
    assert calls == [torch.Size([16, 3, 32, 32])]  # the 8 views of both images, batched
    assert model.training  # the mode is restored
    for key in ("position", "shape", "p_spread"):
        assert result[key].shape == (2,) and np.all((result[key] >= 0) & (result[key] <= 1))
    with pytest.raises(DermogazeError, match="square"):
        view_stability(model, torch.randn(1, 3, 32, 64))
