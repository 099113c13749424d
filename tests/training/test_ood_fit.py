"""The out-of-distribution score of a trained model (``dermogaze.training.ood``): fitted when training ends, on the
training split with the threshold on the validation split, and fitted later for a checkpoint without one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dermogaze.data.cache import load_info
from dermogaze.data.dataset import DermoscopyDataset
from dermogaze.data.prepare import prepare
from dermogaze.data.provenance import fingerprint
from dermogaze.errors import DataError
from dermogaze.metrics.ood import FeatureDistribution, pooled_features
from dermogaze.training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from dermogaze.training.ood import encoder_features, fit_checkpoint_ood


def _features(ckpt: dict, cache, split: str) -> np.ndarray:
    model = model_from_checkpoint(ckpt)
    return encoder_features(model, cache, split, normalisation=(ckpt["mean"], ckpt["std"]))


def test_encoder_features_are_the_pooled_encoder_output_of_the_forward_pass(pipeline_tiny_run, pipeline_cache):
    ckpt = load_checkpoint(pipeline_tiny_run / "best.pt")
    model = model_from_checkpoint(ckpt)
    features = _features(ckpt, pipeline_cache, "val")
    assert features.shape == (8, model.encoder.out_channels) and features.dtype == np.float32
    data = DermoscopyDataset(pipeline_cache, "val", image_size=32, normalisation=(ckpt["mean"], ckpt["std"]))
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    with torch.no_grad():
        _, state = model.forward_with_state(images)
    np.testing.assert_allclose(features, pooled_features(state.x_prime).numpy(), rtol=1e-5, atol=1e-6)


def test_a_trained_run_records_its_training_data_and_score(pipeline_tiny_run, pipeline_cache):
    info = load_info(pipeline_cache)
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(pipeline_tiny_run / name)
        data = ckpt["training_data"]
        assert data["kind"] == "synthetic" and data["name"] == pipeline_cache.name
        assert data["fingerprint"] == fingerprint(pipeline_cache, info) and data["size"] == info["counts"]
        assert data["structure_set"] == "isic2017" and data["structures"] == ckpt["structures"]
        ood = FeatureDistribution.from_state(ckpt["ood"])
        assert (ood.n_train, ood.n_val, ood.quantile) == (24, 8, 0.95)
        train = _features(ckpt, pipeline_cache, "train")
        np.testing.assert_allclose(ood.mean.numpy(), train.astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-6)
        distances = ood.distance(_features(ckpt, pipeline_cache, "val"))
        assert ood.threshold == pytest.approx(np.percentile(distances, 95), rel=1e-6)  # the validation 95th


def test_an_old_checkpoint_gets_its_score_from_its_cache(pipeline_tiny_run, pipeline_cache, tmp_path):
    ckpt = load_checkpoint(pipeline_tiny_run / "best.pt")
    old = {k: v for k, v in ckpt.items() if k not in ("training_data", "ood", "path")}
    path = save_checkpoint(tmp_path / "old.pt", old)
    assert load_checkpoint(path)["ood"] is None
    fitted = fit_checkpoint_ood(path, pipeline_cache, device="cpu", progress=False)
    again = load_checkpoint(path)
    assert again["ood"]["threshold"] == pytest.approx(fitted.threshold)
    assert fitted.threshold == pytest.approx(ckpt["ood"]["threshold"], rel=1e-6)  # the run's own fit
    assert again["training_data"]["kind"] == "unknown"  # the cache is the user's word, not recorded
    torch.testing.assert_close(again["model"], ckpt["model"], rtol=0, atol=0)
    out = fit_checkpoint_ood(pipeline_tiny_run / "best.pt", pipeline_cache, out=tmp_path / "copy.pt", device="cpu",
                             progress=False, quantile=0.5)
    assert load_checkpoint(tmp_path / "copy.pt")["ood"]["quantile"] == 0.5 and out.quantile == 0.5


def test_a_checkpoint_is_not_fitted_on_another_cache_than_its_own(pipeline_tiny_run, tiny_isic_dir, tmp_path):
    other = tmp_path / "other"
    prepare(tiny_isic_dir, other, size=40, progress=False)  # the same structure set, other images
    with pytest.raises(DataError, match="is not the one .* was trained on"):
        fit_checkpoint_ood(pipeline_tiny_run / "best.pt", other, out=tmp_path / "x.pt", device="cpu", progress=False)
    assert not (tmp_path / "x.pt").exists()
