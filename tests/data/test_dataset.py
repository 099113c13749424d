"""DermoscopyDataset over the tiny crafted cache (16 px, see conftest.py), cropped to 8 px."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dermogaze.data.cache import load_split
from dermogaze.data.dataset import DermoscopyDataset
from dermogaze.data.prepare import prepare
from dermogaze.errors import DataError

CACHE_SIZE, CROP = 16, 8  # center crop rows/cols 4..11


@pytest.fixture
def tiny_cache_dir(tiny_isic_dir, tmp_path):
    out = tmp_path / "cache"
    prepare(tiny_isic_dir, out, size=CACHE_SIZE, progress=False)
    return out


def test_item_shapes_dtypes_and_values(tiny_cache_dir):
    ds = DermoscopyDataset(tiny_cache_dir, "train", image_size=CROP)
    arrays = load_split(tiny_cache_dir, "train")
    assert len(ds) == 4 and ds.has_masks
    assert ds.mean == tuple(ds.info["mean"]) and ds.std == tuple(ds.info["std"])
    item = ds[0]
    assert set(item) == {"image", "masks", "present", "label", "id", "index"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, CROP, CROP)
    assert item["masks"].dtype == torch.uint8 and item["masks"].shape == (6, CROP, CROP)
    assert item["present"].dtype == torch.bool and item["present"].shape == (6,)
    assert item["label"].dtype == torch.int64 and item["label"].ndim == 0 and item["label"].item() == 1
    assert item["id"] == "ISIC_0000001" and item["index"] == 0
    assert type(item["image"]) is torch.Tensor and type(item["masks"]) is torch.Tensor
    for i in range(4):
        item = ds[i]
        crop = np.asarray(arrays.images[i])[4:12, 4:12].transpose(2, 0, 1) / 255.0  # (3, 8, 8)
        expected = (crop - np.array(ds.mean)[:, None, None]) / np.array(ds.std)[:, None, None]
        np.testing.assert_allclose(item["image"].numpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(item["masks"].numpy(), arrays.masks[i][:, 4:12, 4:12].astype(np.uint8))
        assert item["label"].item() == arrays.labels[i]
    assert ds[-1]["id"] == "ISIC_0000004"
    with pytest.raises(IndexError):
        ds[4]


def test_present_is_measured_after_the_crop(tiny_cache_dir):
    ds = DermoscopyDataset(tiny_cache_dir, "train", image_size=CROP)
    cached = load_split(tiny_cache_dir, "train").masks
    # Image 1: lesion rows/cols 2..13 cover the whole 4..11 crop → no skin left; pigment network block 5
    # (rows/cols 4..7) is inside the crop.
    assert ds[0]["present"].tolist() == [True, False, True, False, False, False]
    # Image 2: its milia-like cyst (rows 0..3, cols 12..15) is in the cache but cropped away.
    assert cached[1][4].any()
    assert ds[1]["present"].tolist() == [True, False, False, False, False, False]
    # Image 4: pigment network (block 5), negative network and streaks (block 10, rows/cols 8..11).
    assert ds[3]["present"].tolist() == [True, False, True, True, False, True]
    # Without cropping, skin and the cyst are present.
    full = DermoscopyDataset(tiny_cache_dir, "train", image_size=CACHE_SIZE)
    assert full[1]["present"].tolist() == [True, True, False, False, True, False]


def test_dermoscopy_augmentation_reads_presence_after_its_random_crop(tiny_cache_dir):
    """Image 2's milia-like cyst sits in a corner of the cache (rows 0..3, cols 12..15), outside the center crop: a
    random scaled crop sometimes keeps it and sometimes not, and ``present`` says which, every time."""
    ds = DermoscopyDataset(tiny_cache_dir, "train", train=True, image_size=CROP, augment="dermoscopy")
    seen = set()
    for seed in range(30):
        torch.manual_seed(seed)
        item = ds[1]
        assert item["present"].tolist() == (item["masks"].amax(dim=(1, 2)) > 0).tolist()
        assert item["image"].shape == (3, CROP, CROP) and set(item["masks"].unique().tolist()) <= {0, 1}
        seen.add(bool(item["present"][4]))
    assert seen == {True, False}


def test_train_items_are_a_joint_symmetry_of_eval_items(tiny_cache_dir):
    ev = DermoscopyDataset(tiny_cache_dir, "train", image_size=CROP, return_superpixels=True)
    tr = DermoscopyDataset(tiny_cache_dir, "train", train=True, image_size=CROP, return_superpixels=True)
    ref = ev[3]
    for seed in range(12):
        torch.manual_seed(seed)
        item = tr[3]
        ops = [
            (k, f)
            for k in range(4)
            for f in (False, True)
            if torch.equal(item["superpixels"], _sym(ref["superpixels"], k, f))
        ]
        assert len(ops) == 1  # the superpixel map (all distinct blocks) identifies the symmetry
        k, f = ops[0]
        torch.testing.assert_close(item["masks"], _sym(ref["masks"], k, f))
        torch.testing.assert_close(item["image"], _sym(ref["image"], k, f))
        assert torch.equal(item["present"], ref["present"])


def _sym(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    y = torch.rot90(x, k, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if flip else y


def test_superpixels_are_cropped_like_the_masks(tiny_cache_dir):
    ds = DermoscopyDataset(tiny_cache_dir, "val", image_size=CROP, return_superpixels=True)
    item = ds[0]
    assert item["superpixels"].dtype == torch.int64 and item["superpixels"].shape == (CROP, CROP)
    r, c = np.mgrid[4:12, 4:12]
    np.testing.assert_array_equal(item["superpixels"].numpy(), 300 + 4 * (r // 4) + c // 4)


def test_classification_only_cache(tiny_isic_factory, tmp_path):
    root = tiny_isic_factory(tmp_path / "cls", annotations=False)
    prepare(root, tmp_path / "cache", size=CACHE_SIZE, progress=False)
    ds = DermoscopyDataset(tmp_path / "cache", "val", train=True, image_size=CROP)
    assert not ds.has_masks
    item = ds[1]
    assert item["masks"].shape == (6, CROP, CROP) and item["masks"].dtype == torch.uint8
    assert not item["masks"].any() and not item["present"].any()
    assert item["label"].item() == 0 and item["image"].shape == (3, CROP, CROP)
    with pytest.raises(DataError, match="no superpixel maps"):
        DermoscopyDataset(tmp_path / "cache", "val", image_size=CROP, return_superpixels=True)


def test_constructor_errors(tiny_cache_dir, tmp_path):
    with pytest.raises(DataError, match="image_size 32 exceeds the cache size 16"):
        DermoscopyDataset(tiny_cache_dir, "train", image_size=32)
    with pytest.raises(DataError, match="not in this cache"):
        DermoscopyDataset(tiny_cache_dir, "holdout")
    with pytest.raises(DataError, match="no prepared cache"):
        DermoscopyDataset(tmp_path / "missing", "train")


def test_dataloader_workers_and_pickling(tiny_cache_dir):
    ds = DermoscopyDataset(tiny_cache_dir, "train", image_size=CROP)
    ds[0]  # memory maps opened in this process ...
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000  # ... but not copied into the pickle
    assert pickle.loads(blob)[2]["id"] == "ISIC_0000003"
    loader = DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    batches = list(loader)
    assert [len(b["id"]) for b in batches] == [3, 1]
    first = batches[0]
    assert first["image"].shape == (3, 3, CROP, CROP) and first["masks"].shape == (3, 6, CROP, CROP)
    assert first["present"].shape == (3, 6) and first["label"].tolist() == [1, 0, 0]
    assert first["id"] == ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003"]
    torch.testing.assert_close(first["image"][1], ds[1]["image"])


def test_dataset_of_a_cache_whose_reprepare_failed(tiny_isic_dir, tiny_cache_dir):
    """A re-prepare that meets a bad image leaves the cache as it was: datasets open and read the old items."""
    ds = DermoscopyDataset(tiny_cache_dir, "train", image_size=CROP)
    before = [ds[i] for i in range(len(ds))]
    (tiny_isic_dir / "ISIC-2017_Training_Data" / "ISIC_0000004.png").write_bytes(b"")  # a 0-byte image
    with pytest.raises(DataError, match="ISIC_0000004.png: not a readable image"):
        prepare(tiny_isic_dir, tiny_cache_dir, size=CACHE_SIZE, progress=False)
    for dataset in (ds, DermoscopyDataset(tiny_cache_dir, "train", image_size=CROP)):
        assert len(dataset) == 4
        for i, old in enumerate(before):
            item = dataset[i]
            assert item["id"] == old["id"] and item["label"] == old["label"]
            torch.testing.assert_close(item["image"], old["image"], rtol=0, atol=0)
            torch.testing.assert_close(item["masks"], old["masks"], rtol=0, atol=0)
