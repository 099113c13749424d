"""synth → prepare → DermoscopyDataset: the synthetic ISIC collection survives the whole data path."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dermogaze.data import synth
from dermogaze.structures import DERMOSCOPIC_FEATURES, NUM_STRUCTURES

cache_mod = pytest.importorskip("dermogaze.data.cache")
prepare_mod = pytest.importorskip("dermogaze.data.prepare")
dataset_mod = pytest.importorskip("dermogaze.data.dataset")
transforms_mod = pytest.importorskip("dermogaze.data.transforms")

W, H = 128, 96  # synthetic pictures (non-square: the cache resize is anisotropic)
S = 64  # cache size
CROP = 48  # Dataset image_size
COUNTS = {"Training": 4, "Validation": 2, "Test_v2": 3}
SPLITS = {"train": "Training", "val": "Validation", "test": "Test_v2"}
SEED = 5
PREVALENCES = {"streaks": 1.0, "melanoma": 0.5}  # every lesion has streaks: a structure at a recorded place


def nearest(array: np.ndarray, size: int) -> np.ndarray:
    """Reference nearest resize of an integer (H, W) array to (size, size), by Pillow."""
    return np.asarray(Image.fromarray(array.astype(np.int32)).resize((size, size), Image.Resampling.NEAREST))


def decode_official(path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.uint32)
    return (rgb[..., 0] + (rgb[..., 1] << 8) + (rgb[..., 2] << 16)).astype(np.int64)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("roundtrip")
    isic = synth.write_synthetic_isic(root / "isic", counts=COUNTS, image_size=(W, H), seed=SEED,
                                      prevalences=PREVALENCES, progress=False)
    info = prepare_mod.prepare(isic, root / "cache", size=S, progress=False)
    return isic, root / "cache", info


def official(isic, split: str):
    """Per id: label, JSON features (n, 4), decoded superpixels and lesion mask, drawn cues."""
    with open(isic / f"ISIC-2017_{split}_Part3_GroundTruth.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    truth = json.loads(synth.truth_path(isic, split).read_text())["samples"]
    out = {}
    for row in rows:
        iid = row["image_id"]
        features = json.loads((isic / f"ISIC-2017_{split}_Part2_GroundTruth" / f"{iid}_features.json").read_text())
        out[iid] = {
            "label": int(float(row["melanoma"])),
            "features": np.stack([np.asarray(features[k], np.float32) for k in DERMOSCOPIC_FEATURES], 1),  # (n, 4)
            "superpixels": decode_official(isic / f"ISIC-2017_{split}_Data" / f"{iid}_superpixels.png"),
            "lesion": np.asarray(Image.open(isic / f"ISIC-2017_{split}_Part1_GroundTruth" / f"{iid}_segmentation.png"))
            > 127,
            "image": np.asarray(Image.open(isic / f"ISIC-2017_{split}_Data" / f"{iid}.jpg").convert("RGB")),
            "truth": truth[iid],
        }
    return out


def test_cache_info(collection):
    _, _, info = collection
    assert info["counts"] == {name: COUNTS[official] for name, official in SPLITS.items()}
    assert info["has_masks"] and info["has_superpixels"]
    assert info["size"] == S and list(info["structures"][2:]) == list(DERMOSCOPIC_FEATURES)
    assert info["skipped"] == []


@pytest.mark.parametrize("split", list(SPLITS))
def test_cached_arrays_match_the_files(collection, split):
    isic, cache, _ = collection
    ref = official(isic, SPLITS[split])
    arrays = cache_mod.load_split(cache, split)
    n = COUNTS[SPLITS[split]]
    assert arrays.images.dtype == np.uint8 and arrays.images.shape == (n, S, S, 3)
    assert arrays.masks.shape == (n, NUM_STRUCTURES, S, S) and arrays.masks.dtype in (np.bool_, np.uint8)
    assert arrays.labels.dtype == np.float32 and arrays.labels.shape == (n,)
    assert arrays.superpixels.dtype == np.int32 and arrays.superpixels.shape == (n, S, S)
    assert sorted(arrays.ids) == sorted(ref)
    for i, iid in enumerate(arrays.ids):
        r = ref[iid]
        assert arrays.labels[i] == r["label"]
        np.testing.assert_array_equal(arrays.sp_features[i], r["features"])
        sp = nearest(r["superpixels"], S)
        np.testing.assert_array_equal(arrays.superpixels[i], sp)
        # Features quantised by superpixel: every mask pixel is the JSON value of its superpixel.
        dermo = r["features"][sp] >= 0.5  # (S, S, 4)
        masks = np.asarray(arrays.masks[i], bool)
        np.testing.assert_array_equal(masks[2:], dermo.transpose(2, 0, 1))
        lesion = nearest(r["lesion"], S).astype(bool)
        any_dermo = dermo.any(-1)
        np.testing.assert_array_equal(masks[0], lesion & ~any_dermo)  # Eq. 19
        np.testing.assert_array_equal(masks[1], ~(lesion | any_dermo))  # Eq. 18
        reference = np.asarray(Image.fromarray(r["image"]).resize((S, S), Image.Resampling.BILINEAR)).astype(int)
        assert np.abs(arrays.images[i].astype(int) - reference).mean() < 2.0


def streak_sector(truth: dict, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Geometry of every cache pixel relative to the drawn lesion and streaks, in original pixels.

    Computed from the drawn parameters of the sidecar, mapping cache pixel centres back to the
    original picture (``x = (j + 0.5)·W/S``). Returns the angle from the streak direction
    (degrees), the border radius ``r(θ)`` and the distance beyond the border ``d - r(θ)``.
    """
    jj, ii = np.meshgrid(np.arange(size), np.arange(size))
    x, y = (jj + 0.5) * W / size, (ii + 0.5) * H / size
    cx, cy = truth["center"][0] * W, truth["center"][1] * H
    theta = np.arctan2(y - cy, x - cx)
    r = truth["radius"] * min(W, H) * (1 + sum(a * np.cos(k * theta + phi) for k, a, phi in truth["harmonics"]))
    rel_angle = np.degrees((theta - truth["streak_angle"] + np.pi) % (2 * np.pi) - np.pi)
    return rel_angle, r, np.hypot(x - cx, y - cy) - r


def test_streaks_found_where_they_were_drawn(collection):
    """Every lesion has streaks over a recorded angular sector at its border: the cached mask is there.

    The drawn region runs from 0.85·r(θ) to r(θ) + L (L = streak_length·min(W, H), see synth);
    labelled superpixels may straddle it by about one superpixel (≈ 16·s px across, s = min(W, H)/240).
    """
    isic, cache, _ = collection
    s = min(W, H) / 240
    margin = 20 * s
    for split, name in SPLITS.items():
        ref = official(isic, name)
        ds = dataset_mod.DermoscopyDataset(cache, split, image_size=S)
        for item in (ds[i] for i in range(len(ds))):
            truth = ref[item["id"]]["truth"]
            assert truth["streaks"]
            streaks = item["masks"][5].numpy() > 0.5
            assert item["present"][5] and streaks.any()
            angle, r, beyond = streak_sector(truth, S)
            half = np.degrees(truth["streak_span"]) / 2
            assert np.all(np.abs(angle[streaks]) <= half + 35), item["id"]
            assert np.all(beyond[streaks] >= -0.15 * r[streaks] - margin), item["id"]
            length = truth["streak_length"] * min(W, H)
            assert np.all(beyond[streaks] <= length + margin), item["id"]
            # The mask's centre of mass points in the streak direction (the region is an annular sector).
            jj, ii = np.meshgrid(np.arange(S), np.arange(S))
            x, y = (jj[streaks].mean() + 0.5) * W / S, (ii[streaks].mean() + 0.5) * H / S
            direction = np.degrees(np.arctan2(y - truth["center"][1] * H, x - truth["center"][0] * W))
            assert abs((direction - np.degrees(truth["streak_angle"]) + 180) % 360 - 180) < 15, item["id"]
            # Nothing on the opposite side of the lesion.
            assert not streaks[np.abs(angle) > 150].any(), item["id"]


@pytest.mark.parametrize("train", [False, True])
def test_dataset_items(collection, train):
    isic, cache, info = collection
    torch.manual_seed(0)
    ds = dataset_mod.DermoscopyDataset(cache, "train", train=train, image_size=CROP, return_superpixels=True)
    arrays = cache_mod.load_split(cache, "train")
    ref = official(isic, "Training")
    assert len(ds) == COUNTS["Training"] and ds.has_masks
    np.testing.assert_allclose(ds.mean, info["mean"])
    top, left = transforms_mod.center_crop_box(S, CROP)
    mean, std = np.asarray(info["mean"]), np.asarray(info["std"])
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].dtype == torch.float32 and item["image"].shape == (3, CROP, CROP)
        assert item["masks"].dtype == torch.uint8 and item["masks"].shape == (NUM_STRUCTURES, CROP, CROP)
        assert item["present"].dtype == torch.bool and item["present"].shape == (NUM_STRUCTURES,)
        assert item["label"].dtype == torch.int64 and item["label"].shape == ()
        assert item["superpixels"].dtype == torch.int64 and item["superpixels"].shape == (CROP, CROP)
        iid = item["id"]
        assert item["index"] == i and iid == arrays.ids[i] and int(item["label"]) == ref[iid]["label"]
        masks = item["masks"].numpy()
        assert set(np.unique(masks)) <= {0, 1}
        np.testing.assert_array_equal(item["present"].numpy(), masks.reshape(NUM_STRUCTURES, -1).any(1))
        # The transformed superpixel map still indexes the JSON features: masks stay superpixel-quantised.
        sp = item["superpixels"].numpy()
        np.testing.assert_array_equal(masks[2:] > 0.5, (ref[iid]["features"][sp] >= 0.5).transpose(2, 0, 1))
        # Un-normalised image and masks are the cached crop, up to the joint rotation/flip.
        image = item["image"].numpy() * std[:, None, None] + mean[:, None, None]  # (3, CROP, CROP) in [0, 1]
        crop = slice(top, top + CROP), slice(left, left + CROP)
        cached_image = arrays.images[i][crop].transpose(2, 0, 1) / 255.0
        cached_masks = np.asarray(arrays.masks[i], np.float32)[:, crop[0], crop[1]]
        cached_sp = np.asarray(arrays.superpixels[i])[crop]
        matches = [k for k, g in enumerate(_symmetries()) if np.array_equal(g(cached_sp), sp)]
        assert matches, "superpixels are not a square symmetry of the cached crop"
        g = _symmetries()[matches[0]]
        np.testing.assert_allclose(image, g(cached_image), atol=1e-5)
        np.testing.assert_array_equal(masks, g(cached_masks))
        if not train:
            assert matches[0] == 0  # eval: the plain center crop


def _symmetries():
    """The 8 symmetries of the square acting on the last two axes (identity first)."""
    out = []
    for k in range(4):
        for flip in (False, True):
            def g(a, k=k, flip=flip):
                a = np.rot90(a, k, axes=(-2, -1))
                return a[..., ::-1] if flip else a
            out.append(g)
    return out
