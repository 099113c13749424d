"""Tests of the training objective (docs/design.md §5, paper §3.2, Eqs. 10-16)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dermogaze.config import LossConfig
from dermogaze.errors import DermogazeError
from dermogaze.losses import (
    GazeLoss,
    area_fraction,
    attention_weight,
    focal_loss,
    hungarian_match,
    match_batch,
    matches_on_masks_only,
    matching_cost,
    pairwise_cross_entropy,
    pairwise_soft_iou_loss,
    soft_iou_loss,
)
from dermogaze.models.output import GazeOutput
from dermogaze.structures import PAPER_PRESENCES
from support import brute_force_match, ref_soft_iou

S = 6


# ------------------------------------------------------------------------------------------
# Independent reference implementations (plain Python loops, no vectorisation)
# ------------------------------------------------------------------------------------------
def ref_gaze_loss(masks, gt, present, struct_logits, logits, labels, cfg: LossConfig, weights=None):
    """Direct loop implementation of Eq. 14 with brute-force matching and explicit balancing."""
    B, T = masks.shape[:2]
    pairs = []  # (structure, seg_loss, ce_loss)
    for b in range(B):
        cost = np.array([[ref_soft_iou(masks[b, t], gt[b, s], cfg.eps) for t in range(T)] for s in range(S)])
        _, m = brute_force_match(cost, present[b])
        for t, s in m.items():
            z = struct_logits[b, t].astype(np.float64)
            ce = -(z[s] - math.log(sum(math.exp(v) for v in z)))
            pairs.append((s, cost[s, t], ce))
    if not pairs:
        seg = cls = 0.0
    elif cfg.balancing == "batch":
        by_struct = {}
        for s, l_seg, l_ce in pairs:
            by_struct.setdefault(s, []).append((l_seg, l_ce))
        seg = sum(np.mean([v[0] for v in vs]) for vs in by_struct.values()) / len(by_struct)
        cls = sum(np.mean([v[1] for v in vs]) for vs in by_struct.values()) / len(by_struct)
    else:
        w = [1.0 if weights is None else weights[s] for s, _, _ in pairs]
        seg = sum(wi * p[1] for wi, p in zip(w, pairs, strict=True)) / sum(w)
        cls = sum(wi * p[2] for wi, p in zip(w, pairs, strict=True)) / sum(w)
    diag = 0.0
    for z, y in zip(logits, labels, strict=True):
        p = math.exp(z[1]) / (math.exp(z[0]) + math.exp(z[1]))
        th = cfg.focal_theta
        diag += -y * (1 - p) ** th * math.log(p) - (1 - y) * p**th * math.log(1 - p)
    diag /= len(labels)
    return diag, seg, cls


def random_batch(B=3, T=4, H=6, W=5, seed=0, p_present=0.6):
    g = torch.Generator().manual_seed(seed)
    mask_logits = torch.randn(B, T, H, W, generator=g)
    gt = (torch.rand(B, S, H, W, generator=g) < 0.4).float()
    present = torch.rand(B, S, generator=g) < p_present
    present[0, :] = True  # more present structures than steps in sample 0
    gt = gt * present[:, :, None, None]  # absent structures have empty masks
    present = gt.flatten(2).amax(-1) > 0
    out = GazeOutput(
        logits=torch.randn(B, 2, generator=g),
        masks=torch.sigmoid(mask_logits),
        mask_logits=mask_logits,
        structure_logits=torch.randn(B, T, S, generator=g),
    )
    batch = {"masks": gt, "present": present, "label": torch.randint(0, 2, (B,), generator=g)}
    return out, batch


# ------------------------------------------------------------------------------------------
# softIoU (Eq. 10, corrected)
# ------------------------------------------------------------------------------------------
def test_soft_iou_identical_and_disjoint():
    a = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert soft_iou_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_iou_loss(a, a, eps=0.0).item() == 0.0
    assert soft_iou_loss(a, b).item() == 1.0


def test_soft_iou_worked_fractional_case():
    # pred = [[0.5, 1], [0.25, 0]], gt = [[1, 1], [0, 1]]
    # <pred, gt> = 0.5 + 1 = 1.5 ; |pred|_1 = 1.75 ; |gt|_1 = 3
    # corrected Eq. 10: 1 - 1.5 / (1.75 + 3 - 1.5) = 1 - 1.5 / 3.25 = 7/13 = 0.538461...
    # (the paper's printed '+' would give 1 - 1.5 / 6.25 = 0.76, which is why it is a typo)
    pred = torch.tensor([[0.5, 1.0], [0.25, 0.0]])
    gt = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    assert soft_iou_loss(pred, gt, eps=0.0).item() == pytest.approx(7 / 13, rel=1e-6)
    assert soft_iou_loss(pred, gt).item() == pytest.approx(1 - 1.5 / (3.25 + 1e-6), rel=1e-6)


def test_soft_iou_batched_over_leading_dims():
    g = torch.Generator().manual_seed(1)
    pred, gt = torch.rand(2, 3, 4, 5, generator=g), (torch.rand(2, 3, 4, 5, generator=g) > 0.5).float()
    got = soft_iou_loss(pred, gt)
    assert got.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert got[i, j].item() == pytest.approx(ref_soft_iou(pred[i, j].numpy(), gt[i, j].numpy()), rel=1e-5)


def test_pairwise_soft_iou_matches_elementwise_reference():
    g = torch.Generator().manual_seed(2)
    pred = torch.rand(2, 4, 5, 3, generator=g)  # (B, T, H, W)
    gt = (torch.rand(2, 6, 5, 3, generator=g) > 0.5).float()  # (B, S, H, W)
    cost = pairwise_soft_iou_loss(pred, gt)
    assert cost.shape == (2, 6, 4)
    for b in range(2):
        for s in range(6):
            for t in range(4):
                expected = ref_soft_iou(pred[b, t].numpy(), gt[b, s].numpy())
                assert cost[b, s, t].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------------------------------
# Matching
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 3), (6, 5), (6, 2)])
@pytest.mark.parametrize("seed", range(5))
def test_matching_equals_brute_force(shape, seed):
    rng = np.random.default_rng(seed)
    cost = rng.random(shape)
    present = np.ones(shape[0], dtype=bool)
    steps, structs = hungarian_match(cost, present)
    best, best_map = brute_force_match(cost, present)
    assert steps.dtype == np.int64 and structs.dtype == np.int64
    assert len(steps) == min(shape)
    assert cost[structs, steps].sum() == pytest.approx(best)
    assert dict(zip(steps.tolist(), structs.tolist(), strict=True)) == best_map  # unique optimum (continuous costs)
    assert np.all(np.diff(steps) > 0)  # sorted by step, each step once
    assert len(set(structs.tolist())) == len(structs)  # each structure once


@pytest.mark.parametrize("T", [2, 3, 5])
@pytest.mark.parametrize("seed", range(4))
def test_matching_uses_only_present_structures(T, seed):
    rng = np.random.default_rng(100 + seed)
    cost = rng.random((6, T))
    present = np.array([True, False, True, False, True, True])
    cost[~present] -= 10.0  # absent structures would win every step if they took part
    steps, structs = hungarian_match(torch.from_numpy(cost), torch.from_numpy(present))
    assert set(structs.tolist()) <= {0, 2, 4, 5}
    best, best_map = brute_force_match(cost, present)
    assert dict(zip(steps.tolist(), structs.tolist(), strict=True)) == best_map
    assert len(steps) == min(4, T)


def test_matching_no_present_structure_and_nonfinite_cost():
    steps, structs = hungarian_match(np.random.rand(6, 4), np.zeros(6, dtype=bool))
    assert steps.shape == (0,) and structs.shape == (0,) and steps.dtype == np.int64
    bad = np.ones((6, 3))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        hungarian_match(bad, np.ones(6, dtype=bool))


def test_match_batch_detaches_and_matches_each_sample():
    cost = torch.rand(3, 6, 4, requires_grad=True)
    present = torch.rand(3, 6) < 0.5
    got = match_batch(cost * 2, present)
    for b in range(3):
        _, best_map = brute_force_match(2 * cost[b].detach().numpy(), present[b].numpy())
        assert dict(zip(got[b][0].tolist(), got[b][1].tolist(), strict=True)) == best_map


# ------------------------------------------------------------------------------------------
# Focal loss (Eqs. 11-12)
# ------------------------------------------------------------------------------------------
def test_focal_theta0_is_bce():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(16, 2, generator=g) * 3
    labels = torch.randint(0, 2, (16,), generator=g)
    p = logits.double().softmax(-1)[:, 1]  # float64 so 1 - p keeps its digits near p = 1
    bce = F.binary_cross_entropy(p.double(), labels.double())
    assert focal_loss(logits, labels, theta=0.0).item() == pytest.approx(bce.item(), rel=1e-5)
    per = focal_loss(logits, labels, theta=0.0, reduction="none")
    ref = F.binary_cross_entropy(p.double(), labels.double(), reduction="none")
    np.testing.assert_allclose(per.numpy(), ref.numpy(), rtol=1e-5)


def test_focal_theta2_hand_computed():
    # sample 1: logits (0, ln 3) → ŷ = 3/4, y = 1: FL = -(1/4)^2 ln(3/4) = 0.0625 * 0.2876821 = 0.01798013
    # sample 2: logits (0, ln 3) → ŷ = 3/4, y = 0: FL = -(3/4)^2 ln(1/4) = 0.5625 * 1.3862944 = 0.77979058
    # sample 3: logits (ln 4, 0) → ŷ = 1/5, y = 0: FL = -(1/5)^2 ln(4/5) = 0.04 * 0.2231436 = 0.00892574
    logits = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)], [math.log(4), 0.0]])
    labels = torch.tensor([1, 0, 0])
    per = focal_loss(logits, labels, theta=2.0, reduction="none")
    np.testing.assert_allclose(per.numpy(), [0.01798013, 0.77979058, 0.00892574], rtol=1e-5)
    assert focal_loss(logits, labels, theta=2.0).item() == pytest.approx((0.01798013 + 0.77979058 + 0.00892574) / 3)


def test_focal_is_finite_for_saturated_logits():
    logits = torch.tensor([[0.0, 200.0], [200.0, 0.0]], requires_grad=True)
    loss = focal_loss(logits, torch.tensor([0, 1]), theta=2.0)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 100
    assert torch.isfinite(logits.grad).all()


# ------------------------------------------------------------------------------------------
# Balancing weights (Eqs. 15-16, Table 2)
# ------------------------------------------------------------------------------------------
def test_w_and_w_prime_buffers_reproduce_table2():
    # Table 2 of the paper; Eq. 16 gives 0.39316 where the table prints .394 (see test_structures.py).
    w = GazeLoss(LossConfig(balancing="w"), PAPER_PRESENCES).structure_weights
    np.testing.assert_allclose(w.numpy(), [0.133, 0.133, 0.162, 0.196, 0.181, 0.196], atol=1e-3)
    for name in ("w'", "w_prime"):
        wp = GazeLoss(LossConfig(balancing=name), PAPER_PRESENCES).structure_weights
        np.testing.assert_allclose(wp.numpy(), [0.025, 0.025, 0.044, 0.394, 0.086, 0.427], atol=1e-3)


def test_balancing_errors():
    with pytest.raises(DermogazeError, match="presences"):
        GazeLoss(LossConfig(balancing="w"))
    with pytest.raises(DermogazeError, match="presences"):
        GazeLoss(LossConfig(balancing="w'"), None)
    with pytest.raises(DermogazeError, match="unknown loss.balancing"):
        GazeLoss(LossConfig(balancing="inverse"))
    with pytest.raises(DermogazeError, match="never present"):
        GazeLoss(LossConfig(balancing="w'"), [10, 10, 0, 1, 1, 1])
    with pytest.raises(DermogazeError, match="one count per structure"):
        GazeLoss(LossConfig(balancing="w"), [10, 10, 1], structures=["lesion", "skin"])
    with pytest.raises(DermogazeError, match="never present: \\['streaks'\\]"):
        GazeLoss(LossConfig(balancing="w'"), [10, 10, 1, 0], structures=["lesion", "skin", "globules", "streaks"])
    GazeLoss(LossConfig(balancing="batch"))  # presences are not needed here
    GazeLoss(LossConfig(balancing="none"))


def _two_pair_sample():
    """One sample, 2 steps, 2 present structures (2 = pigment network, 5 = streaks), 2×2 masks.

    step 0 = [[1, 1], [0, 0]] vs gt_2 = [[1, 0], [0, 0]]: inter 1, union 2 + 1 - 1 = 2 → 0.5
    step 1 = [[0, 0], [1, .5]] vs gt_5 = [[0, 0], [1, 1]]: inter 1.5, union 1.5 + 2 - 1.5 = 2 → 0.25
    cross pairs do not overlap (cost 1), so the matching is step 0 ↔ 2, step 1 ↔ 5.
    structure logits: step 0 all zero → CE = ln 6; step 1 = (0,0,0,0,0,ln 5) → CE(5) = -ln(5/10) = ln 2.
    """
    masks = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.5]]]])  # (1, 2, 2, 2)
    gt = torch.zeros(1, 6, 2, 2)
    gt[0, 2] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    gt[0, 5] = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    sl = torch.zeros(1, 2, 6)
    sl[0, 1, 5] = math.log(5)
    out = GazeOutput(logits=torch.zeros(1, 2), masks=masks, mask_logits=None, structure_logits=sl)
    batch = {"masks": gt, "label": torch.tensor([1])}  # no 'present': derived from the masks
    return out, batch


def test_weighted_mean_divides_by_used_weights():
    # P = (10, 10, 1, 10, 10, 3) → w'_2 : w'_5 = (1/1) : (1/3) = 3 : 1 (whatever the normalisation)
    # seg = (3 * 0.5 + 1 * 0.25) / (3 + 1) = 0.4375 ; cls = (3 ln 6 + ln 2) / 4
    out, batch = _two_pair_sample()
    res = GazeLoss(LossConfig(balancing="w'", eps=0.0), [10, 10, 1, 10, 10, 3])(out, batch)
    assert [m.tolist() for m in res["matching"][0]] == [[0, 1], [2, 5]]
    assert res["seg"].item() == pytest.approx(0.4375, rel=1e-6)
    assert res["cls"].item() == pytest.approx((3 * math.log(6) + math.log(2)) / 4, rel=1e-6)
    # plain mean for comparison: (0.5 + 0.25) / 2
    res = GazeLoss(LossConfig(balancing="none", eps=0.0))(out, batch)
    assert res["seg"].item() == pytest.approx(0.375, rel=1e-6)
    assert res["cls"].item() == pytest.approx((math.log(6) + math.log(2)) / 2, rel=1e-6)


def _single_structure_sample(s: int, seed: int, H=4, W=4, T=3):
    g = torch.Generator().manual_seed(seed)
    gt = torch.zeros(1, 6, H, W)
    gt[0, s] = (torch.rand(H, W, generator=g) < 0.5).float()
    gt[0, s, 0, 0] = 1.0
    masks = torch.rand(1, T, H, W, generator=g)
    sl = torch.randn(1, T, 6, generator=g)
    return masks, gt, sl


def test_batch_balancing_duplicates_do_not_change_a_structures_share():
    # sample A holds only streaks (5); sample B holds lesion (0) and skin (1).
    mA, gA, sA = _single_structure_sample(5, seed=1)
    g = torch.Generator().manual_seed(2)
    gB = torch.zeros(1, 6, 4, 4)
    gB[0, 0, :2] = 1.0
    gB[0, 1, 2:] = 1.0
    mB, sB = torch.rand(1, 3, 4, 4, generator=g), torch.randn(1, 3, 6, generator=g)

    def run(balancing, parts):
        out = GazeOutput(
            logits=torch.zeros(len(parts), 2),
            masks=torch.cat([p[0] for p in parts]),
            structure_logits=torch.cat([p[2] for p in parts]),
        )
        batch = {"masks": torch.cat([p[1] for p in parts]), "label": torch.zeros(len(parts), dtype=torch.long)}
        return GazeLoss(LossConfig(balancing=balancing))(out, batch)

    once = run("batch", [(mA, gA, sA), (mB, gB, sB)])
    thrice = run("batch", [(mA, gA, sA), (mB, gB, sB), (mA, gA, sA), (mA, gA, sA)])
    assert thrice["seg"].item() == pytest.approx(once["seg"].item(), rel=1e-6)
    assert thrice["cls"].item() == pytest.approx(once["cls"].item(), rel=1e-6)
    # without balancing the duplicated structure's share grows (the check above can fail)
    once_n = run("none", [(mA, gA, sA), (mB, gB, sB)])
    thrice_n = run("none", [(mA, gA, sA), (mB, gB, sB), (mA, gA, sA), (mA, gA, sA)])
    assert abs(thrice_n["seg"].item() - once_n["seg"].item()) > 1e-3


@pytest.mark.parametrize("balancing", ["none", "batch", "w", "w'"])
@pytest.mark.parametrize("seed", [0, 1])
def test_gaze_loss_equals_loop_reference(balancing, seed):
    out, batch = random_batch(B=3, T=4, seed=seed)
    cfg = LossConfig(balancing=balancing)
    presences = [50, 40, 20, 5, 10, 3]
    weights = None
    if balancing in ("w", "w'"):
        p = np.array(presences, dtype=float)
        weights = (p.sum() - p) / (5 * p.sum()) if balancing == "w" else 1 / (p * (1 / p).sum())
    res = GazeLoss(cfg, presences)(out, batch)
    diag, seg, cls = ref_gaze_loss(
        out.masks.numpy(),
        batch["masks"].numpy(),
        batch["present"].numpy(),
        out.structure_logits.numpy(),
        out.logits.numpy().astype(np.float64),
        batch["label"].numpy(),
        cfg,
        weights,
    )
    assert res["diag"].item() == pytest.approx(diag, rel=1e-5)
    assert res["seg"].item() == pytest.approx(seg, rel=1e-5)
    assert res["cls"].item() == pytest.approx(cls, rel=1e-5)
    for (t, s), pres in zip(res["matching"], batch["present"], strict=True):
        assert set(s.tolist()) <= set(np.flatnonzero(pres.numpy()).tolist())
        assert len(t) == min(int(pres.sum()), 4)


# ------------------------------------------------------------------------------------------
# The combined loss (Eq. 14)
# ------------------------------------------------------------------------------------------
def test_loss_combines_terms_with_alpha_beta_gamma_mu():
    out, batch = random_batch(seed=4)
    cfg = LossConfig(alpha=0.3, beta=0.6, gamma=0.2, mu=0.9, focal_theta=1.5, balancing="none")
    res = GazeLoss(cfg)(out, batch)
    d, s, c = res["diag"].item(), res["seg"].item(), res["cls"].item()
    assert res["loss"].item() == pytest.approx(0.3 * d + 0.6 * (0.2 * s + 0.9 * c), rel=1e-6)
    # the terms do not depend on the mixing weights
    res2 = GazeLoss(LossConfig(alpha=1.0, beta=0.0, gamma=1.0, mu=0.0, focal_theta=1.5, balancing="none"))(out, batch)
    assert (res2["diag"].item(), res2["seg"].item(), res2["cls"].item()) == (d, s, c)
    assert res2["loss"].item() == pytest.approx(d, rel=1e-6)
    # the paper's defaults
    dflt = GazeLoss(LossConfig(focal_theta=1.5, balancing="none"))(out, batch)
    assert dflt["loss"].item() == pytest.approx(0.25 * d + 0.75 * (0.75 * s + 0.25 * c), rel=1e-6)


def test_no_decoder_loss_is_the_focal_term():
    logits = torch.randn(5, 2, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 0, 1])
    res = GazeLoss(LossConfig())(GazeOutput(logits=logits), {"label": labels})
    assert torch.equal(res["loss"], focal_loss(logits, labels, theta=2.0))
    assert res["seg"].item() == 0.0 and res["cls"].item() == 0.0
    assert len(res["matching"]) == 5 and all(len(t) == 0 and len(s) == 0 for t, s in res["matching"])
    res["loss"].backward()
    assert logits.grad.abs().sum() > 0


def test_uint8_masks_give_the_float_loss():
    """The dataset sends masks as uint8 (a quarter of the bytes); the loss casts them itself."""
    out, batch = random_batch(B=3, T=4, seed=2)
    expected = GazeLoss(LossConfig(balancing="w"), PAPER_PRESENCES)(out, batch)
    got = GazeLoss(LossConfig(balancing="w"), PAPER_PRESENCES)(out, {**batch, "masks": batch["masks"].to(torch.uint8)})
    for term in ("loss", "diag", "seg", "cls"):
        assert got[term].item() == expected[term].item(), term


def test_batch_without_any_present_structure_is_finite():
    out, batch = random_batch(B=2, seed=5)
    batch["masks"] = torch.zeros_like(batch["masks"])
    batch["present"] = torch.zeros(2, 6, dtype=torch.bool)
    mask_logits = out.mask_logits.clone().requires_grad_(True)
    out.masks = torch.sigmoid(mask_logits)
    for balancing in ("batch", "none", "w"):
        res = GazeLoss(LossConfig(balancing=balancing), PAPER_PRESENCES)(out, batch)
        assert res["seg"].item() == 0.0 and res["cls"].item() == 0.0
        assert torch.isfinite(res["loss"])
        assert res["loss"].item() == pytest.approx(0.25 * res["diag"].item())
    res["loss"].backward()
    assert torch.equal(mask_logits.grad, torch.zeros_like(mask_logits))


@pytest.mark.parametrize("balancing", ["batch", "none", "w'"])
def test_unmatched_steps_get_zero_gradient(balancing):
    B, T, H, W = 2, 5, 8, 8
    g = torch.Generator().manual_seed(7)
    mask_logits = torch.randn(B, T, H, W, generator=g, requires_grad=True)
    struct_logits = torch.randn(B, T, 6, generator=g, requires_grad=True)
    logits = torch.randn(B, 2, generator=g, requires_grad=True)
    gt = torch.zeros(B, 6, H, W)
    gt[:, 0, :4] = 1.0  # lesion
    gt[:, 1, 4:] = 1.0  # skin
    gt[1, 3, :2, :2] = 1.0  # negative network in sample 1 only
    out = GazeOutput(logits=logits, masks=torch.sigmoid(mask_logits), structure_logits=struct_logits)
    batch = {"masks": gt, "present": gt.flatten(2).amax(-1) > 0, "label": torch.tensor([0, 1])}
    res = GazeLoss(LossConfig(alpha=0.0, balancing=balancing), PAPER_PRESENCES)(out, batch)
    res["loss"].backward()
    for b in range(B):
        matched = set(res["matching"][b][0].tolist())
        assert len(matched) == (2 if b == 0 else 3)
        for t in range(T):
            if t in matched:
                assert mask_logits.grad[b, t].abs().sum() > 0 and struct_logits.grad[b, t].abs().sum() > 0
            else:
                assert torch.equal(mask_logits.grad[b, t], torch.zeros(H, W))
                assert torch.equal(struct_logits.grad[b, t], torch.zeros(6))
    assert torch.equal(logits.grad, torch.zeros_like(logits))  # α = 0


# ------------------------------------------------------------------------------------------
# Overfitting a single batch with a tiny stand-in model
# ------------------------------------------------------------------------------------------
class TinyGazeNet(nn.Module):
    """A few convolutions producing a GazeOutput from 32×32 images (stand-in for a real variant)."""

    def __init__(self, steps: int = 3) -> None:
        super().__init__()
        self.steps = steps
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.mask_head = nn.Conv2d(16, steps, 1)
        self.struct_head = nn.Linear(16, steps * 6)
        self.diag_head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> GazeOutput:
        f = self.body(x)  # (B, 16, H, W)
        pooled = f.mean(dim=(2, 3))  # (B, 16)
        mask_logits = self.mask_head(f)  # (B, T, H, W)
        return GazeOutput(
            logits=self.diag_head(pooled),
            masks=torch.sigmoid(mask_logits),
            mask_logits=mask_logits,
            structure_logits=self.struct_head(pooled).view(-1, self.steps, 6),  # (B, T, 6)
        )


def test_loss_decreases_when_overfitting_one_batch():
    torch.manual_seed(0)
    B, H = 4, 32
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(H), indexing="ij")
    gt = torch.zeros(B, 6, H, H)
    for b in range(B):
        lesion = ((yy - 16) ** 2 + (xx - 16) ** 2 < (6 + 2 * b) ** 2).float()
        gt[b, 0] = lesion
        gt[b, 1] = 1 - lesion
        if b % 2:
            gt[b, 5] = lesion * (xx > 16).float()  # streaks inside the lesion
            gt[b, 0] = lesion * (xx <= 16).float()
    images = gt[:, :3] + 0.1 * torch.randn(B, 3, H, H)
    batch = {"masks": gt, "present": gt.flatten(2).amax(-1) > 0, "label": torch.tensor([0, 1, 0, 1])}
    model = TinyGazeNet(steps=3)
    loss_fn = GazeLoss(LossConfig())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        res = loss_fn(model(images), batch)
        opt.zero_grad()
        res["loss"].backward()
        opt.step()
        losses.append(res["loss"].item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]


def test_loss_is_float32_under_autocast_with_half_precision_outputs():
    out, batch = random_batch(B=2, T=3, H=16, W=16, seed=8)
    ref = GazeLoss(LossConfig())(out, batch)
    half = GazeOutput(
        logits=out.logits.bfloat16(),
        masks=out.masks.bfloat16(),
        structure_logits=out.structure_logits.bfloat16(),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = GazeLoss(LossConfig())(half, batch)
    assert res["loss"].dtype == torch.float32
    assert [m.tolist() for m in res["matching"][1]] == [m.tolist() for m in ref["matching"][1]]
    assert res["loss"].item() == pytest.approx(ref["loss"].item(), rel=2e-2)


# ------------------------------------------------------------------------------------------
# Attention supervision (loss.attention = λ, docs/design.md §6b) and the area-fraction reduction
# ------------------------------------------------------------------------------------------
def test_area_fraction_is_the_share_of_each_cell_inside_the_mask():
    m = torch.zeros(4, 6)
    m[0, 0] = 1.0  # one pixel: 1/4 of cell (0, 0) of a 2×3 grid of 2×2 cells
    m[2:, 4:] = 1.0  # the whole cell (1, 2)
    m[3, 2] = 1.0  # 1/4 of cell (1, 1)
    expected = torch.tensor([[0.25, 0.0, 0.0], [0.0, 0.25, 1.0]])
    torch.testing.assert_close(area_fraction(m, (2, 3)), expected)
    batched = area_fraction(torch.stack([m, 1 - m]).unsqueeze(0), (2, 3))  # (1, 2, 2, 3)
    torch.testing.assert_close(batched[0, 1], 1 - expected)
    # a grid that does not divide the mask: adaptive cells (rows 0-1 / 1-2 of 3, columns as before)
    torch.testing.assert_close(area_fraction(torch.ones(3, 3), (2, 2)), torch.ones(2, 2))
    assert area_fraction(torch.zeros(8, 8), (2, 2)).sum() == 0


def _attention_sample(requires_grad: bool = False):
    """One sample, T = 2, 4×4 masks, attention on a 2×2 grid.

    lesion = the top-left 2×2 block + pixel (0, 2): cell fractions [[1, 1/4], [0, 0]];
    skin = the rest: [[0, 3/4], [1, 1]]. Predicted masks = the GT masks, so step 0 ↔ lesion and
    step 1 ↔ skin. A_0 = [[.5, .2], [.2, .1]]: Σ A·m = .5 + .2/4 = .55 → 0.45;
    A_1 = [[.1, .4], [.25, .25]]: Σ A·m = .3 + .25 + .25 = .8 → 0.2. Mean (balancing none) 0.325.
    """
    gt = torch.zeros(1, 6, 4, 4)
    gt[0, 0, :2, :2] = 1.0
    gt[0, 0, 0, 2] = 1.0
    gt[0, 1] = 1.0 - gt[0, 0]
    attention = torch.tensor([[[[0.5, 0.2], [0.2, 0.1]], [[0.1, 0.4], [0.25, 0.25]]]], requires_grad=requires_grad)
    struct = torch.zeros(1, 2, 6, requires_grad=requires_grad)
    logits = torch.tensor([[0.3, -0.2]], requires_grad=requires_grad)
    out = GazeOutput(logits=logits, attention=attention, masks=gt[:, :2].clone(), structure_logits=struct)
    return out, {"masks": gt, "label": torch.tensor([1])}


def test_attention_term_hand_computed():
    out, batch = _attention_sample()
    plain = GazeLoss(LossConfig(balancing="none"))(out, batch)
    supervised = GazeLoss(LossConfig(balancing="none", attention=2.0))(out, batch)
    assert [m.tolist() for m in supervised["matching"][0]] == [[0, 1], [0, 1]]
    assert supervised["att"].item() == pytest.approx(0.325, rel=1e-6)
    assert plain["att"].item() == pytest.approx(0.325, rel=1e-6)  # reported, not added
    assert supervised["loss"].item() == pytest.approx(plain["loss"].item() + 2.0 * 0.325, rel=1e-6)
    # w' balancing with presences giving lesion : skin = 3 : 1 → (3 · 0.45 + 0.2) / 4
    weighted = GazeLoss(LossConfig(balancing="w'", attention=1.0), [1, 3, 5, 5, 5, 5])(out, batch)
    assert weighted["att"].item() == pytest.approx((3 * 0.45 + 0.2) / 4, rel=1e-6)


def test_attention_warmup_schedule_and_weight_in_effect():
    # λ·min(1, (epoch − 1)/K): K = 4 → 0, λ/4, λ/2, 3λ/4, λ, λ
    cfg = LossConfig(attention=2.0, attention_warmup=4)
    assert [attention_weight(cfg, e) for e in range(1, 7)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    assert [attention_weight(LossConfig(attention=2.0), e) for e in (1, 9)] == [2.0, 2.0]
    assert attention_weight(LossConfig(attention_warmup=3), 2) == 0.0
    out, batch = _attention_sample()
    plain = GazeLoss(LossConfig(balancing="none"))(out, batch)
    loss = GazeLoss(LossConfig(balancing="none", attention=2.0, attention_warmup=4))
    assert loss(out, batch, attention=0.5)["loss"].item() == pytest.approx(plain["loss"].item() + 0.5 * 0.325, rel=1e-6)
    assert loss(out, batch, attention=0.0)["loss"].item() == plain["loss"].item()
    assert loss(out, batch)["loss"].item() == pytest.approx(plain["loss"].item() + 2.0 * 0.325, rel=1e-6)


def test_attention_matching_follows_the_gazes_when_the_masks_tie():
    """loss.attention_matching: equal predicted masks tie the soft-IoU costs; the attention decides."""
    out, batch = _attention_sample()
    out.masks = torch.full((1, 2, 4, 4), 0.5)  # both steps predict the same mask
    out.attention = torch.tensor([[[[0.0, 0.0], [0.5, 0.5]], [[1.0, 0.0], [0.0, 0.0]]]])  # A_0 on skin, A_1 on lesion
    cfg = {"balancing": "none", "attention": 0.5}
    masks_only = GazeLoss(LossConfig(**cfg))(out, batch)
    assert [m.tolist() for m in masks_only["matching"][0]] == [[0, 1], [0, 1]]  # the tie: step 0 ↔ lesion
    assert masks_only["att"].item() == 1.0  # each gaze lies wholly outside its structure
    both = GazeLoss(LossConfig(**cfg, attention_matching=True))(out, batch)
    steps, structures = (m.tolist() for m in both["matching"][0])
    assert dict(zip(steps, structures, strict=True)) == {0: 1, 1: 0}  # step 0 ↔ skin, step 1 ↔ lesion
    assert both["att"].item() == 0.0
    assert both["seg"].item() == pytest.approx(masks_only["seg"].item())  # the masks' terms are the same
    assert both["loss"].item() == pytest.approx(masks_only["loss"].item() - 0.5, rel=1e-6)
    # λ = 0 in effect (warm-up, or loss.attention = 0): the paper's matching
    assert [m.tolist() for m in GazeLoss(LossConfig(**cfg, attention_matching=True))(
        out, batch, attention=0.0)["matching"][0]] == [[0, 1], [0, 1]]


def test_class_matching_follows_the_classifier_when_the_masks_tie():
    """loss.class_matching: equal predicted masks tie the soft-IoU costs; the classifier decides (DETR's cost)."""
    out, batch = _attention_sample()
    out.masks = torch.full((1, 2, 4, 4), 0.5)  # both steps predict the same mask
    struct = torch.zeros(1, 2, 6)
    struct[0, 0, 1] = struct[0, 1, 0] = 4.0  # step 0 names skin, step 1 names lesion
    out.structure_logits = struct
    cfg = LossConfig(balancing="none", class_matching=True)
    masks_only = GazeLoss(LossConfig(balancing="none"))(out, batch)
    assert [m.tolist() for m in masks_only["matching"][0]] == [[0, 1], [0, 1]]  # the tie: step 0 ↔ lesion
    named = GazeLoss(cfg)(out, batch)
    steps, structures = (m.tolist() for m in named["matching"][0])
    assert dict(zip(steps, structures, strict=True)) == {0: 1, 1: 0}  # step 0 ↔ skin, step 1 ↔ lesion
    # CE of a step against the structure it names: log(1 + 5 e^-4); against the other: log(e^4 + 5) = 4 + that
    assert named["cls"].item() == pytest.approx(math.log1p(5 * math.exp(-4)), rel=1e-5)  # float32
    assert masks_only["cls"].item() == pytest.approx(math.log(math.exp(4) + 5), rel=1e-6)
    assert named["seg"].item() == pytest.approx(masks_only["seg"].item())
    assert named["loss"].item() == pytest.approx(masks_only["loss"].item() - cfg.beta * cfg.mu * 4.0, rel=1e-5)
    # the cost itself: βγ·softIoU + βμ·CE, against a direct computation
    soft = pairwise_soft_iou_loss(out.masks, batch["masks"])  # (1, 6, 2)
    ce = torch.stack([F.cross_entropy(struct[0], torch.full((2,), s), reduction="none") for s in range(6)])[None]
    torch.testing.assert_close(matching_cost(soft, None, cfg, classes=pairwise_cross_entropy(struct)),
                               cfg.beta * cfg.gamma * soft + cfg.beta * cfg.mu * ce)
    assert matches_on_masks_only(LossConfig()) and not matches_on_masks_only(cfg)
    assert torch.equal(matching_cost(soft, None, LossConfig(), classes=ce), soft)  # off: the paper's cost


def test_attention_weight_zero_is_the_papers_loss_exactly():
    out, batch = random_batch(B=3, T=4, H=8, W=8, seed=3)
    g = torch.Generator().manual_seed(1)
    leaves = {
        "logits": out.logits.clone().requires_grad_(True),
        "mask_logits": out.mask_logits.clone().requires_grad_(True),
        "structure_logits": out.structure_logits.clone().requires_grad_(True),
        "attention": torch.softmax(torch.randn(3, 4, 16, generator=g), -1).view(3, 4, 4, 4).requires_grad_(True),
    }

    def run(with_attention):
        for v in leaves.values():
            v.grad = None
        o = GazeOutput(
            logits=leaves["logits"], masks=torch.sigmoid(leaves["mask_logits"]),
            structure_logits=leaves["structure_logits"], attention=leaves["attention"] if with_attention else None,
        )
        res = GazeLoss(LossConfig())(o, batch)
        res["loss"].backward()
        return res, {k: None if v.grad is None else v.grad.clone() for k, v in leaves.items()}

    with_att, grads = run(True)
    without, grads0 = run(False)
    assert torch.equal(with_att["loss"], without["loss"])
    assert not with_att["att"].requires_grad and with_att["att"].item() > 0
    assert without["att"].item() == 0.0
    for k in ("logits", "mask_logits", "structure_logits"):
        assert torch.equal(grads[k], grads0[k])
    assert grads["attention"] is None  # λ = 0: nothing reaches the attention maps


def test_attention_gradient_is_minus_lambda_times_the_matched_mask():
    """d(λ L_att)/dA_t = −λ w m_s / Σw at the matched steps: zero outside the mask and at unmatched steps."""
    B, T, H = 2, 4, 8
    gt = torch.zeros(B, 6, H, H)
    gt[:, 0, :4, :4] = 1.0  # lesion: the top-left quarter
    gt[:, 1] = 1.0 - gt[:, 0]
    gt[1, 5, 6:, :1] = 1.0  # streaks in sample 1: one pixel column of two cells (fraction 1/2)
    gt[1, 1, 6:, :1] = 0.0
    masks = torch.zeros(B, T, H, H)
    masks[:, 1], masks[:, 3] = gt[:, 0], gt[:, 1]  # steps 1 and 3 match lesion and skin
    masks[1, 0] = gt[1, 5]  # step 0 matches the streaks in sample 1; step 2 stays unmatched
    attention = torch.full((B, T, 4, 4), 1 / 16, requires_grad=True)
    out = GazeOutput(logits=torch.zeros(B, 2), attention=attention, masks=masks, structure_logits=torch.zeros(B, T, 6))
    batch = {"masks": gt, "label": torch.tensor([0, 1])}
    lam = 0.5
    res = GazeLoss(LossConfig(alpha=0.0, beta=0.0, balancing="none", attention=lam))(out, batch)
    res["loss"].backward()
    n_pairs = 2 + 3
    expected = torch.zeros(B, T, 4, 4)
    for b, (steps, structures) in enumerate(res["matching"]):
        for t, s in zip(steps.tolist(), structures.tolist(), strict=True):
            expected[b, t] = -lam * area_fraction(gt[b, s], (4, 4)) / n_pairs
    assert [m.tolist() for m in res["matching"][1]] == [[0, 1, 3], [5, 0, 1]]
    torch.testing.assert_close(attention.grad, expected)
    assert torch.equal(attention.grad[:, 2], torch.zeros(B, 4, 4))  # the unmatched step
    assert (attention.grad[:, 1, 2:, :] == 0).all() and (attention.grad[:, 1, :2, :2] < 0).all()  # lesion only


def test_attention_supervision_reaches_only_what_makes_the_attention():
    """In a real network λ > 0 changes the gradients of the attentive model (and the encoder under it), not
    those of the structure decoder or the diagnosis branch, whose outputs do not depend on A_t."""
    from dermogaze.models import build_model

    torch.manual_seed(0)
    model = build_model("deco_gap_5", width=0.125, image_size=32, steps=3)
    with torch.no_grad():
        model.attention.v_a.weight.normal_(0.0, 0.5)
    images = torch.randn(2, 3, 32, 32)
    gt = torch.zeros(2, 6, 32, 32)
    gt[:, 0, 4:20, 4:20] = 1.0
    gt[:, 1] = 1.0 - gt[:, 0]
    batch = {"masks": gt, "label": torch.tensor([0, 1])}

    def grads(lam):
        model.zero_grad()
        GazeLoss(LossConfig(attention=lam))(model(images), batch)["loss"].backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    g0, g1 = grads(0.0), grads(1.0)
    changed = {n for n in g0 if not torch.equal(g0[n], g1[n])}
    assert {"attention.v_a.weight", "attention.w_a.weight", "attention.u_h.weight"} <= changed
    assert not any(n.startswith(("decoder.", "diagnosis.")) for n in changed)
