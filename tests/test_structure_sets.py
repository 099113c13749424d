"""The structure set as a property of the data: ISIC 2017 (6) and ISIC 2018 (7) structures through the
model, the loss (balancing, matching, the diagnosis term masked for unlabelled samples), the metrics and
the checkpoint check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dermogaze.config import LossConfig
from dermogaze.data.cache import format_stats
from dermogaze.errors import DermogazeError
from dermogaze.losses import GazeLoss, focal_loss
from dermogaze.metrics.structures import named_masks, per_structure_jaccard
from dermogaze.models import build_model
from dermogaze.models.output import GazeOutput
from dermogaze.structures import (
    ISIC2017_STRUCTURES,
    ISIC2018_STRUCTURES,
    dermoscopic,
    presence_weights,
    short_names,
)
from dermogaze.training.checkpoint import check_structure_set, model_from_checkpoint
from support import brute_force_match, ref_soft_iou

pytestmark = pytest.mark.usefixtures("one_thread")
S7 = len(ISIC2018_STRUCTURES)


def test_named_sets():
    assert ISIC2018_STRUCTURES == ("lesion", "skin", "pigment_network", "negative_network", "streaks",
                                   "milia_like_cyst", "globules")
    assert dermoscopic(ISIC2018_STRUCTURES) == ISIC2018_STRUCTURES[2:]
    assert dermoscopic(ISIC2017_STRUCTURES) == ("pigment_network", "negative_network", "milia_like_cyst", "streaks")
    assert short_names(ISIC2018_STRUCTURES)[-3:] == ["streaks", "milia", "globules"]


def test_presence_weights_for_seven_structures_hand_computed():
    p = np.array([100, 100, 50, 10, 5, 20, 25], dtype=float)
    w = [sum(p[j] for j in range(7) if j != i) / (6 * p.sum()) for i in range(7)]  # Eq. 15
    w_prime = [1 / (p[i] * sum(1 / q for q in p)) for i in range(7)]  # Eq. 16
    np.testing.assert_allclose(presence_weights(p, "w"), w)
    np.testing.assert_allclose(presence_weights(p, "w'"), w_prime)
    info = {"size": 16, "splits": ["train"], "counts": {"train": 100}, "melanoma": {"train": 0},
            "labelled": {"train": 0}, "layout": "isic2018", "mean": [0, 0, 0], "std": [1, 1, 1], "skipped": [],
            "metadata": [], "has_masks": True, "structures": list(ISIC2018_STRUCTURES),
            "presences": p.astype(int).tolist(),
            "pixel_fraction": [0.1] * 7}
    text = format_stats(info)
    w_row = next(line for line in text.splitlines() if line.startswith("w "))
    np.testing.assert_allclose([float(v) for v in w_row.split()[1:]], w, atol=5e-4)
    assert "globules" in text


def test_model_structure_classifier_follows_the_set():
    model = build_model("deco_gap_3", width=0.125, image_size=32, steps=2, num_structures=S7)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.structure_logits.shape == (2, 2, S7)
    assert model.init_kwargs["num_structures"] == S7
    ckpt = {"variant": "deco_gap_3", "model_kwargs": {k: v for k, v in model.init_kwargs.items() if k != "name"},
            "model": model.state_dict()}
    again = model_from_checkpoint(ckpt)
    assert again.decoder.classifier.fc2.out_features == S7
    with pytest.raises(DermogazeError, match="num_structures"):
        build_model("deco_gap_3", width=0.125, image_size=32, num_structures=1)


def test_checkpoint_refuses_a_cache_of_another_structure_set():
    ckpt = {"structures": list(ISIC2017_STRUCTURES), "path": "run/best.pt"}
    check_structure_set(ckpt, {"structures": list(ISIC2017_STRUCTURES)}, "cache17")
    message = "run/best.pt was trained on the structures lesion.*cache18 holds.*globules"
    with pytest.raises(DermogazeError, match=message):
        check_structure_set(ckpt, {"structures": list(ISIC2018_STRUCTURES)}, "cache18")


def _batch(labels, seed=0, B=4, T=3, H=5, W=6):
    g = torch.Generator().manual_seed(seed)
    mask_logits = torch.randn(B, T, H, W, generator=g)
    gt = (torch.rand(B, S7, H, W, generator=g) < 0.4).float()
    out = GazeOutput(logits=torch.randn(B, 2, generator=g, requires_grad=True), masks=torch.sigmoid(mask_logits),
                     mask_logits=mask_logits, structure_logits=torch.randn(B, T, S7, generator=g))
    return out, {"masks": gt, "present": gt.flatten(2).amax(-1) > 0, "label": labels}


def _ref_structure_terms(out, batch, weights):
    """Brute-force matching and weighted means, written out (7 structures)."""
    masks, gt = out.masks.numpy(), batch["masks"].numpy()
    present = batch["present"].numpy()
    pairs = []
    for b in range(masks.shape[0]):
        cost = np.array([[ref_soft_iou(masks[b, t], gt[b, s]) for t in range(masks.shape[1])] for s in range(S7)])
        _, m = brute_force_match(cost, present[b])
        for t, s in m.items():
            z = out.structure_logits[b, t].double().numpy()
            pairs.append((s, cost[s, t], -(z[s] - math.log(np.exp(z).sum()))))
    w = [weights[s] for s, _, _ in pairs]
    return (sum(wi * p[1] for wi, p in zip(w, pairs, strict=True)) / sum(w),
            sum(wi * p[2] for wi, p in zip(w, pairs, strict=True)) / sum(w))


def _ref_focal(logits, labels, theta=2.0):
    total = 0.0
    for z, y in zip(logits, labels, strict=True):
        p = math.exp(z[1]) / (math.exp(z[0]) + math.exp(z[1]))
        total += -y * (1 - p) ** theta * math.log(p) - (1 - y) * p**theta * math.log(1 - p)
    return total / len(labels)


@pytest.mark.parametrize("unknown", [torch.tensor([1, -1, 0, -1]), torch.tensor([1.0, math.nan, 0.0, math.nan])])
def test_diagnosis_term_is_masked_for_unlabelled_samples(unknown):
    presences = [40, 40, 20, 5, 4, 10, 8]
    cfg = LossConfig(balancing="w'")
    loss_fn = GazeLoss(cfg, presences, structures=ISIC2018_STRUCTURES)
    out, batch = _batch(unknown)
    terms = loss_fn(out, batch)
    # L_diag: the focal loss over the labelled samples 0 and 2 only, computed directly
    logits = out.logits.detach().double().numpy()
    assert terms["diag"].item() == pytest.approx(_ref_focal(logits[[0, 2]], [1, 0]), rel=1e-6)
    # the structure terms use every sample, weighted by Eq. 16 of the presences
    seg, cls = _ref_structure_terms(out, batch, presence_weights(presences, "w'"))
    assert terms["seg"].item() == pytest.approx(seg, rel=1e-5)
    assert terms["cls"].item() == pytest.approx(cls, rel=1e-5)
    expected = cfg.alpha * terms["diag"] + cfg.beta * (cfg.gamma * terms["seg"] + cfg.mu * terms["cls"])
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    # the unlabelled samples' logits get no gradient
    terms["loss"].backward()
    grad = out.logits.grad
    assert torch.all(grad[[1, 3]] == 0) and torch.all(grad[[0, 2]].abs().sum(1) > 0)


def test_batch_without_labels_trains_the_structures_only():
    loss_fn = GazeLoss(LossConfig(balancing="batch"))
    out, batch = _batch(torch.full((4,), -1))
    terms = loss_fn(out, batch)
    assert terms["diag"].item() == 0.0
    assert terms["seg"].item() > 0 and terms["cls"].item() > 0
    terms["loss"].backward()
    assert torch.all(out.logits.grad == 0)


def test_fully_labelled_batch_is_unchanged():
    labels = torch.tensor([1, 0, 0, 1])
    out, batch = _batch(labels)
    terms = GazeLoss(LossConfig(balancing="none"))(out, batch)
    assert terms["diag"].item() == pytest.approx(focal_loss(out.logits, labels, 2.0).item(), rel=1e-7)


def test_loss_refuses_presences_of_another_set():
    loss_fn = GazeLoss(LossConfig(balancing="w"), list(range(1, 7)), structures=ISIC2017_STRUCTURES)
    out, batch = _batch(torch.tensor([1, 0, 0, 1]))
    with pytest.raises(ValueError, match="6 presence weights for a model of 7 structures"):
        loss_fn(out, batch)


def test_named_masks_union_of_the_naming_steps():
    masks = np.zeros((3, 2, 2))
    masks[0, 0, 0] = 0.9  # step 0 names structure 4, one pixel above 0.5
    masks[1, 1, 1] = 0.5  # step 1 names structure 4 too: exactly 0.5 counts
    masks[2] = 0.7  # step 2 names structure 6
    named = named_masks(masks, np.array([4, 4, 6]), S7)
    assert named.shape == (S7, 2, 2)
    np.testing.assert_array_equal(named[4], [[True, False], [False, True]])
    assert named[6].all() and not named[[0, 1, 2, 3, 5]].any()
    gt = np.zeros((S7, 2, 2), bool)
    gt[4, 0, :] = True  # IoU with named[4]: 1 / 3
    jac = per_structure_jaccard(gt, gt.reshape(S7, -1).any(1), masks, np.array([4, 4, 6]))
    assert jac[4] == pytest.approx(1 / 3) and np.isnan(jac[[0, 1, 2, 3, 5, 6]]).all()


def test_a_diagnosis_only_variant_refuses_a_structure_only_cache(tmp_path):
    from test_isic2018 import write_isic2018

    from dermogaze.config import load_config
    from dermogaze.data.prepare import prepare
    from dermogaze.errors import DataError
    from dermogaze.training.train import train

    root = write_isic2018(tmp_path / "isic")
    prepare(root, tmp_path / "cache", size=40, progress=False)  # no --labels: structure-only
    cfg = load_config("tiny", [f"data.cache={tmp_path / 'cache'}", "model.name=vgg_gap"])
    with pytest.raises(DataError, match="no diagnosis label in split 'train'.*nothing to learn"):
        train(cfg, tmp_path / "run", progress=False)
