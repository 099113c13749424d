"""The out-of-distribution score (``dermogaze.metrics.ood``): the Mahalanobis distance against scipy's on hand-made
features, the threshold at the validation quantile, the stored state and its checks."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis
from sklearn.covariance import LedoitWolf

from dermogaze.errors import DermogazeError
from dermogaze.metrics.ood import (
    FEATURES,
    QUANTILE,
    RIDGE,
    FeatureDistribution,
    check_state,
    ood_note,
    pooled_features,
)


def _features(n: int, c: int = 6, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    """``n`` correlated features of ``c`` channels (a fixed mixing of Gaussian noise), shifted by ``shift``."""
    rng = np.random.default_rng(seed)
    mixing = np.triu(np.ones((c, c))) / np.sqrt(np.arange(1, c + 1))
    return rng.normal(size=(n, c)) @ mixing + 1.5 + shift


def test_pooled_features_average_the_grid():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)  # (B, C, h, w)
    pooled = pooled_features(x.to(torch.bfloat16))
    assert pooled.dtype == torch.float32 and pooled.shape == (2, 3)
    torch.testing.assert_close(pooled, x.mean(dim=(-2, -1)))
    assert float(pooled[0, 0]) == (0 + 1 + 2 + 3) / 4


def test_distance_is_scipys_mahalanobis_with_the_stored_covariance():
    mean = torch.tensor([1.0, -2.0, 0.5])
    cov = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, -0.2], [0.0, -0.2, 0.5]])
    dist = FeatureDistribution(mean=mean, covariance=cov, threshold=1.0)
    points = np.array([[1.0, -2.0, 0.5], [2.0, 0.0, 0.0], [-1.0, 3.0, 4.0]])
    inverse = np.linalg.inv(cov.double().numpy())
    expected = [mahalanobis(p, mean.double().numpy(), inverse) for p in points]
    np.testing.assert_allclose(dist.distance(points), expected, rtol=1e-12)
    assert dist.distance(points)[0] == 0.0  # the mean itself
    # by hand, a diagonal covariance: d = sqrt(Σ (f - μ)² / σ²)
    diagonal = FeatureDistribution(mean=torch.zeros(2), covariance=torch.diag(torch.tensor([4.0, 9.0])), threshold=1.0)
    assert diagonal.distance(torch.tensor([[2.0, 3.0]]))[0] == pytest.approx(np.sqrt(1.0 + 1.0))


def test_fit_is_ledoit_wolf_plus_the_ridge_and_matches_scipy():
    train, val = _features(40, seed=0), _features(12, seed=1)
    dist = FeatureDistribution.fit(train, val)
    lw = LedoitWolf().fit(train).covariance_
    expected = lw + RIDGE * np.trace(lw) / lw.shape[0] * np.eye(lw.shape[0])
    np.testing.assert_allclose(dist.covariance.double().numpy(), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dist.mean.double().numpy(), train.mean(axis=0), rtol=1e-6)
    assert dist.mean.dtype == dist.covariance.dtype == torch.float32
    assert (dist.n_train, dist.n_val, dist.quantile) == (40, 12, QUANTILE)
    inverse = np.linalg.inv(dist.covariance.double().numpy())
    mu = dist.mean.double().numpy()
    far = _features(5, seed=2, shift=4.0)
    expected_d = [mahalanobis(f, mu, inverse) for f in far]
    np.testing.assert_allclose(dist.distance(torch.from_numpy(far).float()), expected_d, rtol=1e-5)


def test_threshold_is_the_validation_95th_percentile():
    train, val = _features(60, seed=3), _features(21, seed=4)
    dist = FeatureDistribution.fit(train, val)
    inverse = np.linalg.inv(dist.covariance.double().numpy())
    distances = [mahalanobis(f, dist.mean.double().numpy(), inverse) for f in val]
    assert dist.threshold == pytest.approx(np.percentile(distances, 95), rel=1e-9)
    assert dist.threshold == pytest.approx(sorted(distances)[19], rel=1e-9)  # 21 images: the 20th of them
    other = FeatureDistribution.fit(train, val, quantile=0.5)
    assert other.threshold == pytest.approx(np.median(distances), rel=1e-9)


def test_scores_flag_what_lies_beyond_the_threshold():
    train, val = _features(50, seed=5), _features(20, seed=6)
    dist = FeatureDistribution.fit(train, val)
    near, far = _features(1, seed=7), _features(1, seed=8, shift=10.0)
    scores = dist.score(np.concatenate([near, far]))
    assert scores[1]["out_of_distribution"] and scores[1]["distance"] > scores[1]["threshold"] == dist.threshold
    assert scores[0]["distance"] < scores[1]["distance"]
    assert set(scores[0]) == {"distance", "threshold", "out_of_distribution"}
    note = ood_note(scores[1])
    assert note.startswith("out of distribution") and f"{scores[1]['distance']:.2f}" in note
    assert ood_note(None) is None and ood_note({**scores[1], "out_of_distribution": False}) is None


@pytest.mark.parametrize("train, val, message", [
    (np.zeros((1, 3)), np.zeros((2, 3)), "at least 2 training images"),
    (np.ones((5, 3)), np.ones((2, 3)), "do not vary"),
    (np.ones((5, 3)), np.ones((2, 4)), "validation features of 3 channels"),
    (np.full((5, 3), np.nan), np.ones((2, 3)), "NaN or infinite"),
])
def test_a_fit_that_cannot_be_made_says_why(train, val, message):
    with pytest.raises(DermogazeError, match=message):
        FeatureDistribution.fit(train, val)


def test_state_round_trips_and_is_checked():
    dist = FeatureDistribution.fit(_features(30, c=4), _features(10, c=4, seed=9))
    state = dist.to_state()
    assert state["features"] == FEATURES and check_state(state, 4) is None
    back = FeatureDistribution.from_state(state)
    feats = _features(3, c=4, seed=10)
    np.testing.assert_array_equal(back.distance(feats), dist.distance(feats))
    assert back.threshold == dist.threshold
    bad = {
        "channels": (dict(state), 5, "shape (5,)"),
        "asymmetric": ({**state, "covariance": state["covariance"] + torch.triu(torch.ones(4, 4), 1)}, 4, "symmetric"),
        "indefinite": ({**state, "covariance": -state["covariance"]}, 4, "positive definite"),
        "nan": ({**state, "mean": torch.full((4,), float("nan"))}, 4, "finite"),
        "threshold": ({**state, "threshold": -1.0}, 4, "threshold"),
        "quantile": ({**state, "quantile": 1.0}, 4, "quantile"),
        "n_train": ({**state, "n_train": 1}, 4, "n_train"),
        "keys": ({k: v for k, v in state.items() if k != "n_val"}, 4, "mapping"),
        "features": ({**state, "features": "GAP(X)"}, 4, "features"),
    }
    for name, (value, channels, message) in bad.items():
        problem = check_state(value, channels)
        assert problem is not None and message in problem, name
