"""The explanation measures of docs/design.md §6b: hand-computed values on crafted maps, masks and models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dermogaze.config import LossConfig
from dermogaze.losses import area_fraction
from dermogaze.metrics.explanation import (
    ExplanationAccumulator,
    blur_baseline,
    centroid_cells,
    centroid_hits,
    curve_area,
    perturbation_curves,
    pointing_and_relevance,
    saliency_order,
)
from dermogaze.models import GazeOutput, GazeState

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

NAMES = ("lesion", "skin", "dots")  # three structures: the measures take their names from the caller


def crafted():
    """One image, T = 2 steps, 4×4 pixels, a 2×2 attention grid (cells of 2×2 pixels).

    lesion = the top-left cell and the pixel (0, 2): cell fractions [[1, 1/4], [0, 0]];
    skin = the rest but (3, 3): [[0, 3/4], [1, 3/4]]; dots = the pixel (3, 3): [[0, 0], [0, 1/4]] (below one cell).
    A_0 = [[.1, .6], [.2, .1]] (peak on cell (0, 1)); A_1 = [[.1, .1], [.1, .7]] (peak on cell (1, 1)).
    """
    masks = torch.zeros(1, 3, 4, 4)
    masks[0, 0, :2, :2] = 1.0
    masks[0, 0, 0, 2] = 1.0
    masks[0, 1] = 1.0 - masks[0, 0]
    masks[0, 2, 3, 3] = 1.0
    masks[0, 1, 3, 3] = 0.0  # dots are not skin: skin = [[0, 3/4], [1, 3/4]]
    attention = torch.tensor([[[[0.1, 0.6], [0.2, 0.1]], [[0.1, 0.1], [0.1, 0.7]]]])
    return attention, masks


def test_pointing_relevance_and_lift_hand_computed():
    attention, masks = crafted()
    grid = area_fraction(masks, (2, 2))
    torch.testing.assert_close(grid[0, 2], torch.tensor([[0.0, 0.0], [0.0, 0.25]]))
    hit, relevance, lift = pointing_and_relevance(attention, grid)
    # step 0 peaks on cell (0, 1): lesion 1/4 > 0 (hit), skin 3/4 (hit), dots 0 (miss)
    assert hit[0, 0].tolist() == [True, True, False]
    # step 1 peaks on cell (1, 1): lesion 0 (miss), skin 3/4 (hit), dots 1/4 (hit: a mask smaller than a cell)
    assert hit[0, 1].tolist() == [False, True, True]
    expected = torch.tensor([[0.1 + 0.6 / 4, 0.6 * 0.75 + 0.2 + 0.1 * 0.75, 0.1 / 4],
                             [0.1 + 0.1 / 4, 0.1 * 0.75 + 0.1 + 0.7 * 0.75, 0.7 / 4]])
    torch.testing.assert_close(relevance[0], expected)
    means = torch.tensor([1.25 / 4, 2.5 / 4, 0.25 / 4])  # mean(m_s) over the 4 cells
    torch.testing.assert_close(lift[0], expected / means)
    assert lift[0, 1, 2].item() == pytest.approx(0.7 / 0.25 * 0.25 * 4)  # 2.8: 2.8 times a uniform attention


class StubModel(nn.Module):
    """A model whose diagnosis per removed gaze is given: ``table[t]`` = P(melanoma) without gaze t (None = all)."""

    def __init__(self, table: dict, steps: int):
        super().__init__()
        self.table = table
        self.steps = steps

    def diagnose(self, state, keep=None, *, temperature=1.0):
        if keep is None:
            return self.table[None]
        removed = int(torch.nonzero(~keep)[0])
        return self.table[removed]

    def forward_with_state(self, images, *, decode=True):
        return GazeOutput(logits=torch.zeros(images.shape[0], 2)), GazeState(x_prime=images)


def _out(attention, masks, structure_logits):
    b, t = attention.shape[:2]
    # predicted masks = the GT masks of the structures the test wants each step matched to
    return GazeOutput(logits=torch.zeros(b, 2), attention=attention, masks=masks, structure_logits=structure_logits)


def test_accumulator_pointing_relevance_hallucination_and_excluded_images():
    attention, masks = crafted()
    # a second image where "dots" is absent (an empty mask: excluded and counted) and the same maps
    masks2 = masks.clone()
    masks2[0, 1, 3, 3] = 1.0
    masks2[0, 2] = 0.0
    gt = torch.cat([masks, masks2])  # (2, 3, 4, 4)
    att = attention.repeat(2, 1, 1, 1)
    # predicted masks: step 0 = lesion, step 1 = skin → Hungarian: step 0 ↔ lesion, step 1 ↔ skin (dots unmatched)
    pred = torch.stack([gt[:, 0], gt[:, 1]], dim=1)
    # named: step 0 names "dots" (absent in image 2: a hallucination), step 1 names "skin"
    logits = torch.zeros(2, 2, 3)
    logits[:, 0, 2] = 5.0
    logits[:, 1, 1] = 5.0
    model = StubModel({None: torch.tensor([0.5, 0.5]), 0: torch.tensor([0.5, 0.5]), 1: torch.tensor([0.5, 0.5])}, 2)
    acc = ExplanationAccumulator(NAMES, faithfulness=0)
    acc.update(model, torch.zeros(2, 3, 4, 4), _out(att, pred, logits), GazeState(x_prime=att), masks=gt)
    res = acc.compute()
    pm = res["pointing_matched"]
    # matched pairs: (step 0, lesion) hit in both images, (step 1, skin) hit in both
    assert pm["per_structure"] == {"lesion": 1.0, "skin": 1.0, "dots": None}
    assert pm["overall"] == 1.0 and pm["excluded"] == {"lesion": 0, "skin": 0, "dots": 1}
    assert res["present_images"] == {"lesion": 2, "skin": 2, "dots": 1}
    # named: step 0 names dots: image 1 → miss (peak cell (0, 1) has no dots), image 2 → absent (miss, hallucination)
    pn = res["pointing_named"]
    assert pn["per_structure"] == {"lesion": None, "skin": 1.0, "dots": 0.0}
    assert pn["overall"] == pytest.approx(2 / 4)
    hr = res["hallucination_rate"]
    assert hr["per_structure"]["dots"] == pytest.approx(0.5) and hr["overall"] == pytest.approx(1 / 4)
    # relevance of (step 0, lesion) = .1 + .6/4 in both images; (step 1, skin): image 1 .7, image 2 .1·.75 + .1 + .7
    rm = res["relevance_mass"]["per_structure"]
    assert rm["lesion"] == pytest.approx(0.25)
    assert rm["skin"] == pytest.approx((0.1 * 0.75 + 0.1 + 0.7 * 0.75 + 0.1 * 0.75 + 0.1 + 0.7) / 2)
    lift = res["relevance_lift"]["per_structure"]
    assert lift["lesion"] == pytest.approx(0.25 / (1.25 / 4))
    assert lift["skin"] == pytest.approx(((0.075 + 0.1 + 0.525) / (2.5 / 4) + (0.075 + 0.1 + 0.7) / (2.75 / 4)) / 2)
    assert res["deletion"] is None and res["faithfulness_images"] == 0
    # centroid reference: image 1's whole lesion (lesion + dots, pixel centres) has its centroid at
    # (8/6, 10/6) → cell (0, 0); image 2's (lesion only) at (0.9, 1.3) → cell (0, 0): lesion hit twice, skin and
    # dots never (neither touches cell (0, 0)); overall 2 hits of 5 present (image, structure) pairs
    pc = res["pointing_centroid"]
    assert pc["per_structure"] == {"lesion": 1.0, "skin": 0.0, "dots": 0.0}
    assert pc["overall"] == pytest.approx(2 / 5) and pc["excluded"] == {"lesion": 0, "skin": 0, "dots": 1}
    merged = ExplanationAccumulator(NAMES, faithfulness=0).merge([acc, acc]).compute()["pointing_centroid"]
    assert merged["per_structure"] == pc["per_structure"] and merged["overall"] == pytest.approx(2 / 5)


def test_the_matched_structure_is_the_models_own_losss_matching():
    """A model trained with loss.attention_matching is graded on its own matching; the paper's is reported too."""
    attention, masks = crafted()
    gt = masks.clone()
    gt[0, 1, 3, 3] = 1.0  # dots absent: lesion [[1, 1/4], [0, 0]], skin [[0, 3/4], [1, 1]]
    gt[0, 2] = 0.0
    att = attention.flip(1)  # A_0 peaks on cell (1, 1) (skin only), A_1 on cell (0, 1) (lesion 1/4 and skin 3/4)
    pred = torch.full((1, 2, 4, 4), 0.5)  # both steps decode the same mask: the soft-IoU costs tie
    logits = torch.zeros(1, 2, 3)
    model = StubModel({None: torch.tensor([0.5]), 0: torch.tensor([0.5]), 1: torch.tensor([0.5])}, 2)

    def measures(loss):
        acc = ExplanationAccumulator(NAMES, faithfulness=0, loss=loss)
        acc.update(model, torch.zeros(1, 3, 4, 4), _out(att, pred, logits), GazeState(x_prime=att), masks=gt)
        return acc.compute()

    # the paper's matching breaks the tie as linear_sum_assignment does: step 0 ↔ lesion (its peak misses it),
    # step 1 ↔ skin (hit)
    paper = measures(None)
    assert paper["pointing_matched"]["per_structure"] == {"lesion": 0.0, "skin": 1.0, "dots": None}
    assert paper["pointing_masks_matched"] == paper["pointing_matched"]
    # Σ A·m: step 0 on lesion .1 + .1/4 = .125, on skin .1·.75 + .1 + .7 = .875; step 1 on lesion .1 + .6/4 = .25,
    # on skin .6·.75 + .2 + .1 = .75. Cost βγ·(tie) + λ·(1 − Σ A·m): 0 ↔ lesion, 1 ↔ skin = .875 + .25;
    # 0 ↔ skin, 1 ↔ lesion = .125 + .75, lower: the gazes decide
    trained = measures(LossConfig(attention=1.0, attention_matching=True))
    assert trained["pointing_matched"]["per_structure"] == {"lesion": 1.0, "skin": 1.0, "dots": None}
    assert trained["relevance_mass"]["per_structure"]["lesion"] == pytest.approx(0.25)
    assert trained["relevance_mass"]["per_structure"]["skin"] == pytest.approx(0.875)
    assert trained["pointing_masks_matched"] == paper["pointing_matched"]
    # without the option (or λ = 0: inert) the loss's matching is the paper's
    for loss in (LossConfig(attention=1.0), LossConfig(attention=0.0, attention_matching=True)):
        assert measures(loss)["pointing_matched"] == paper["pointing_matched"]
    # loss.class_matching: the classifier breaks the tie instead: step 0 names skin, step 1 lesion
    logits[0, 0, 1] = logits[0, 1, 0] = 3.0
    named = measures(LossConfig(class_matching=True))
    assert named["pointing_matched"]["per_structure"] == {"lesion": 1.0, "skin": 1.0, "dots": None}
    assert named["pointing_masks_matched"] == paper["pointing_matched"]  # the paper's, reported beside it


def test_centroid_cells_and_hits_hand_computed():
    """8×8 pixels, a 2×2 grid: lesion = rows 0-1, pigment network = rows 2-5 × cols 4-7, skin = the rest."""
    masks = torch.zeros(2, 3, 8, 8)
    masks[0, 0, :2] = 1.0
    masks[0, 2, 2:6, 4:] = 1.0
    masks[0, 1] = 1.0 - masks[0, 0] - masks[0, 2]
    masks[1, 1] = 1.0  # image 2: skin only, no lesion
    # whole lesion of image 1: 16 pixels at y = 0.5, 1.5 (mean 1.0) and 16 at y = 2.5..5.5 (mean 4.0): cy = 2.5;
    # x: the band's mean 4.0, the network's 6.0: cx = 5.0 → cell (floor(2.5·2/8), floor(5·2/8)) = (0, 1) = 1.
    # Image 2 has no lesion: the image centre (4, 4) → cell (1, 1) = 3.
    assert centroid_cells(masks, (2, 2)).tolist() == [1, 3]
    # with the skin counted in (skin=None) image 1's "whole lesion" is the whole image: centre → cell 3
    assert centroid_cells(masks, (2, 2), skin=None).tolist() == [3, 3]
    grid = area_fraction(masks, (2, 2))  # image 1, cell (0, 1): lesion 1/2, skin 0, network 1/2
    assert centroid_hits(grid, torch.tensor([1, 3])).tolist() == [[True, False, True], [False, True, False]]


def test_accumulator_ablation_summary():
    """|ΔP| per step and flips at the threshold, from a model whose ablated diagnoses are given."""
    table = {None: torch.tensor([0.6, 0.2]), 0: torch.tensor([0.4, 0.2]), 1: torch.tensor([0.6, 0.5])}
    model = StubModel(table, steps=2)
    att = torch.full((2, 2, 2, 2), 0.25)
    acc = ExplanationAccumulator(NAMES, threshold=0.5, faithfulness=0)
    acc.update(model, torch.zeros(2, 3, 4, 4), GazeOutput(logits=torch.zeros(2, 2), attention=att), GazeState(att))
    ab = acc.compute()["ablation"]
    assert ab["mean_abs_delta_per_step"] == pytest.approx([0.1, 0.15])
    assert ab["flip_fraction_per_step"] == [0.5, 0.5]  # 0.6 → 0.4 crosses 0.5; 0.2 → 0.5 reaches it
    assert ab["flip_fraction"] == 0.5 and ab["zero_by_construction"] is False
    assert acc.compute()["pointing_matched"] is None  # no ground truth given


def test_a_model_without_gazes_reports_a_zero_ablation_by_construction():
    acc = ExplanationAccumulator(NAMES)
    acc.update(StubModel({}, 2), torch.zeros(3, 3, 4, 4), GazeOutput(logits=torch.zeros(3, 2)), GazeState(None))
    res = acc.compute()
    assert res["ablation"]["zero_by_construction"] is True and res["ablation"]["flip_fraction"] == 0.0
    assert res["n_images"] == 3 and res["deletion"] is None and res["stability"] is None


def test_deletion_and_insertion_of_a_known_function_of_the_pixels():
    """P(melanoma) = Σ w·x over a 2×2 image of ones; baseline zeros; pixels removed by decreasing w.

    Deletion, K = 4: P = 1, .6, .3, .1, 0 → area .25·(.5 + .6 + .3 + .1) = .375; insertion: 0, .4, .7, .9, 1
    → .625. With the benign class as target the curves are 1 − P. The reverse order gives 1, .9, .7, .4, 0.
    """
    w = torch.tensor([0.4, 0.3, 0.2, 0.1])

    def prob(x):
        return (x[:, 0].flatten(1) * w).sum(1)

    images, baseline = torch.ones(2, 3, 2, 2), torch.zeros(2, 3, 2, 2)
    order = torch.stack([torch.arange(4), torch.arange(3, -1, -1)])  # image 0: by w; image 1: reversed
    dele, ins = perturbation_curves(prob, images, baseline, order, torch.tensor([1, 0]), steps=4, chunk=3)
    torch.testing.assert_close(dele[0], torch.tensor([1.0, 0.6, 0.3, 0.1, 0.0]))
    torch.testing.assert_close(ins[0], torch.tensor([0.0, 0.4, 0.7, 0.9, 1.0]))
    torch.testing.assert_close(dele[1], 1 - torch.tensor([1.0, 0.9, 0.7, 0.4, 0.0]))  # benign target
    assert curve_area(dele.numpy())[0] == pytest.approx(0.375)
    assert curve_area(ins.numpy())[0] == pytest.approx(0.625)
    # 20 steps over 4 pixels: round(k·4/20) pixels at step k (0, 0, 0, 1, 1, 1, 1, 1, 2, ...)
    dele20, _ = perturbation_curves(prob, images[:1], baseline[:1], order[:1], torch.tensor([1]), steps=20)
    counts = [round(k * 4 / 20) for k in range(21)]
    expected = [1.0 - float(w[:c].sum()) for c in counts]
    np.testing.assert_allclose(dele20[0].numpy(), expected, atol=1e-6)


def test_saliency_order_follows_the_summed_attention():
    attention = torch.zeros(1, 2, 2, 2)
    attention[0, 0] = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    attention[0, 1] = torch.tensor([[0.5, 0.0], [0.0, 0.5]])  # Σ_t = [[.6, .2], [.3, .9]]
    assert saliency_order(attention, (2, 2)).tolist() == [[3, 0, 2, 1]]  # no upsampling at the same size
    up = saliency_order(attention, (4, 4))[0]
    assert up[0].item() == 15 and up[-1].item() == 3  # bilinear: the corner of the largest / smallest cell


def test_blur_baseline_is_torchvisions_gaussian_blur_with_the_rise_sigma():
    from torchvision.transforms.functional import gaussian_blur

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    sigma = 5 * 64 / 224
    torch.testing.assert_close(blur_baseline(x), gaussian_blur(x, [7, 7], [sigma, sigma]))
    const = torch.full((1, 3, 32, 32), 0.3)
    torch.testing.assert_close(blur_baseline(const), const)  # blurring leaves a constant image alone


def test_accumulator_runs_deletion_on_the_first_images_only_and_reports_stability():
    """A real tiny network: deletion/insertion/stability on the first ``faithfulness`` images, seeded random order."""
    from dermogaze.models import build_model

    torch.manual_seed(0)
    model = build_model("deco_gap_5", width=0.125, image_size=32, steps=3).eval()
    with torch.no_grad():
        model.attention.v_a.weight.normal_(0.0, 0.5)
    images = torch.randn(5, 3, 32, 32)
    calls = []

    def stability(m, x, temperature=1.0):
        calls.append(x.shape[0])
        return {"position": np.array([0.5] * x.shape[0]), "shape": np.array([np.nan] + [1.0] * (x.shape[0] - 1)),
                "p_spread": np.zeros(x.shape[0]), "reason": np.array("a note")}

    def run():
        acc = ExplanationAccumulator(NAMES, faithfulness=4, steps=5, seed=3, stability=stability)
        with torch.no_grad():
            for part in (images[:3], images[3:]):  # two batches: 3 + 1 images get the costly measures
                out, state = model.forward_with_state(part)
                acc.update(model, part, out.float(), state)
        return acc.compute()

    res = run()
    assert res["faithfulness_images"] == 4 and calls == [3, 1] and res["n_images"] == 5
    assert res["stability"] == {"position": 0.5, "shape": 1.0, "p_spread": 0.0, "note": "a note"}
    assert len(res["deletion"]["curve"]) == 6
    again = run()
    assert again["deletion"] == res["deletion"] and again["insertion"] == res["insertion"]  # seeded
    # the first point of the deletion curve is P(predicted class) of the unperturbed image
    with torch.no_grad():
        p = model(images[:4]).melanoma_prob
    first = torch.where(p >= 0.5, p, 1 - p).mean().item()
    assert res["deletion"]["curve"][0] == pytest.approx(first, abs=1e-5)
    assert len(res["ablation"]["mean_abs_delta_per_step"]) == 3 and res["seconds"]["total"] > 0


def test_the_terminal_table_shows_each_measure():
    from dermogaze.evaluation.tables import explanation_lines, format_table

    def section(lesion, skin, overall):
        return {"overall": overall, "per_structure": {"lesion": lesion, "skin": skin},
                "excluded": {"lesion": 0, "skin": 2}}

    ex = {
        "n_images": 5, "faithfulness_images": 3, "present_images": {"lesion": 5, "skin": 3},
        "pointing_matched": section(0.25, 1.0, 0.5), "pointing_named": section(0.5, None, 0.4),
        "hallucination_rate": section(0.0, 0.5, 0.125), "relevance_mass": section(0.3, 0.9, 0.6),
        "relevance_lift": section(0.8, 1.5, 1.1), "pointing_centroid": section(0.75, 0.0, 0.5),
        "ablation": {"mean_abs_delta_per_step": [0.01, 0.2], "flip_fraction": 0.1, "threshold": 0.4,
                     "zero_by_construction": False},
        "deletion": {"auc": 0.31, "random_auc": 0.52}, "insertion": {"auc": 0.71, "random_auc": 0.55},
        "stability": {"position": 0.8, "shape": 0.9, "p_spread": 0.05, "note": None},
        "seconds": {"deletion_insertion": 2.0, "stability": 1.5, "total": 4.0},
    }
    text = "\n".join(explanation_lines(ex))
    assert "  lesion         0.250      0.500      0.750      0.300      0.800          0" in text
    assert "  skin           1.000        n/a      0.000      0.900      1.500          2" in text
    assert "centroid: no model" in text
    assert "hallucination rate 0.125" in text and "mean |ΔP| per step 0.010 0.200; flips at 0.40: 0.100" in text
    assert "deletion AUC 0.310 (random order 0.520)" in text and "insertion AUC 0.710 (random order 0.550)" in text
    assert "on 3 images took 3.5 s" in text and "MultiMatch position 0.800" in text
    assert "\n".join(line.rstrip() for line in text.splitlines()) in format_table({"diagnosis": {}, "explanation": ex})
    assert explanation_lines(None) == []
    assert "masks alone" not in text
    ex["pointing_masks_matched"] = section(0.125, 1.0, 0.4)  # a model matched on its gazes too
    assert ("  matched by the model's loss (beyond the masks); by the masks alone, the paper's: lesion 0.125, "
            "skin 1.000, overall 0.400") in explanation_lines(ex)
    ex["pointing_masks_matched"] = ex["pointing_matched"]
    assert "masks alone" not in "\n".join(explanation_lines(ex))
