"""Training engine: checkpoints, exact resume, optimiser recipe, reproducibility pieces, evaluation outputs."""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from dermogaze.config import load_config
from dermogaze.errors import DataError, DermogazeError
from dermogaze.structures import STRUCTURES

pytestmark = pytest.mark.usefixtures("one_thread")  # as pipeline_tiny_run was trained: results compared at 1e-6


def _rows(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock time."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


# --------------------------------------------------------------------------------------------
# Checkpoints and resume
# --------------------------------------------------------------------------------------------
def test_resumed_run_reproduces_the_uninterrupted_run(pipeline_cache, pipeline_tiny_run, tmp_path):
    from dermogaze.training import train
    from dermogaze.training.checkpoint import load_checkpoint

    run = tmp_path / "interrupted"
    first = train(load_config("tiny", [f"data.cache={pipeline_cache}", "train.epochs=1"]), run, progress=False)
    assert first["epochs"] == 1 and len(_rows(run)) == 1
    after_one = load_checkpoint(run / "last.pt")
    assert after_one["epoch"] == 1

    train(load_config("tiny", [f"data.cache={pipeline_cache}"]), run, resume=True, progress=False)

    reference = _rows(pipeline_tiny_run)
    assert len(reference) == 2
    assert _rows(run) == reference  # both epochs' train/val loss terms and AUC, exactly
    a, b = load_checkpoint(pipeline_tiny_run / "last.pt"), load_checkpoint(run / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=1e-6, msg=k)
    # The second epoch really changed the weights (the comparison above is not between two copies of epoch 1).
    changed = [k for k in a["model"] if a["model"][k].is_floating_point() and
               not torch.equal(a["model"][k], after_one["model"][k])]
    assert changed
    # Adam's moments continue too.
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert sa["step"] == sb["step"]
        torch.testing.assert_close(sb["exp_avg"], sa["exp_avg"], rtol=0, atol=1e-6)


def test_checkpoint_contents(pipeline_cache, pipeline_tiny_run):
    from dermogaze.data.cache import load_info
    from dermogaze.training.checkpoint import CHECKPOINT_KEYS, load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(pipeline_tiny_run / "best.pt")
    assert set(CHECKPOINT_KEYS) <= set(ckpt)
    info = load_info(pipeline_cache)
    assert ckpt["mean"] == pytest.approx(info["mean"]) and ckpt["std"] == pytest.approx(info["std"])
    assert ckpt["structures"] == list(STRUCTURES)
    assert ckpt["variant"] == "deco_gap_3" and ckpt["image_size"] == 32
    cfg = load_config("tiny", [f"data.cache={pipeline_cache}"])
    assert ckpt["config"] == cfg.to_dict()
    assert ckpt["config"] == json.loads(json.dumps(ckpt["config"]))  # plain data
    # best.pt is the epoch of lowest validation loss in metrics.jsonl.
    rows = _rows(pipeline_tiny_run)
    assert ckpt["epoch"] == min(rows, key=lambda r: r["val_loss"])["epoch"]
    assert ckpt["best_val_loss"] == pytest.approx(min(r["val_loss"] for r in rows))
    model = model_from_checkpoint(ckpt)
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k
    # The resolved config is also in the run folder.
    assert (pipeline_tiny_run / "config.yaml").is_file()
    assert load_config(pipeline_tiny_run / "config.yaml").to_dict() == cfg.to_dict()


def test_truncated_checkpoint_is_a_clear_error(pipeline_tiny_run, tmp_path):
    from dermogaze.training.checkpoint import load_checkpoint

    data = (pipeline_tiny_run / "last.pt").read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DermogazeError, match=r"truncated\.pt.*truncated or corrupt"):
        load_checkpoint(bad)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(DermogazeError, match="empty.pt"):
        load_checkpoint(empty)
    with pytest.raises(DermogazeError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_foreign_files_are_refused(tmp_path):
    from dermogaze.training.checkpoint import load_checkpoint

    weights = tmp_path / "state_dict.pt"
    torch.save({"features.0.weight": torch.zeros(2)}, weights)  # a plain state dict, not a run's checkpoint
    with pytest.raises(DermogazeError, match="not a dermogaze checkpoint"):
        load_checkpoint(weights)
    pickled = tmp_path / "object.pt"
    with open(pickled, "wb") as f:
        pickle.dump({"format": "dermogaze-checkpoint", "x": Path("/")}, f, protocol=2)  # weights_only refuses a Path
    with pytest.raises(DermogazeError, match="object.pt"):
        load_checkpoint(pickled)


def test_model_from_checkpoint_refuses_other_variants(pipeline_tiny_run):
    from dermogaze.training.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(pipeline_tiny_run / "best.pt")
    with pytest.raises(DermogazeError, match="best.pt holds a 'deco_gap_3' model, not 'vgg_gap'"):
        model_from_checkpoint(ckpt, variant="vgg_gap")
    # A checkpoint that names another variant than its weights belong to (files mixed up by hand).
    forged = dict(ckpt, variant="deco_gap_17")
    with pytest.raises(DermogazeError, match="do not fit its 'deco_gap_17' model"):
        model_from_checkpoint(forged)


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    from dermogaze.training.checkpoint import save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"a": torch.ones(3)})

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"a": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left behind


# --------------------------------------------------------------------------------------------
# Optimiser recipe and run-level checks
# --------------------------------------------------------------------------------------------
def _tiny_model(**overrides):
    from dermogaze.models import build_model

    return build_model("deco_gap_3", width=0.125, image_size=32, steps=2, batch_norm="on", **overrides)


def test_optimizer_follows_the_paper_recipe():
    from dermogaze.training.optim import build_optimizer

    torch.manual_seed(0)
    model = _tiny_model()
    cfg = load_config(None, ["train.lr_encoder=1e-4"])
    opt = build_optimizer(model, cfg)
    groups = {g["name"]: g for g in opt.param_groups}
    assert {k: g["lr"] for k, g in groups.items()} == {"encoder": 1e-4, "attention": 1e-2, "branches": 1e-4}
    for g in groups.values():
        assert g["betas"] == (0.92, 0.96) and g["weight_decay"] == 1e-6
    expected = model.parameter_groups()
    for name, g in groups.items():
        assert [id(p) for p in g["params"]] == [id(p) for p in expected[name]]
    assert sum(len(g["params"]) for g in groups.values()) == sum(p.requires_grad for p in model.parameters())


def test_lr_zero_groups_are_frozen_and_left_out():
    from dermogaze.training.optim import build_optimizer

    model = _tiny_model()
    attention = list(model.attention.parameters())
    cfg = load_config(None, ["train.lr_encoder=1e-4", "train.lr_attention=0"])
    opt = build_optimizer(model, cfg)
    assert [g["name"] for g in opt.param_groups] == ["encoder", "branches"]
    assert not any(p.requires_grad for p in attention)

    # The paper's frozen encoder (lr 0) needs pretrained weights; the model is frozen through freeze_encoder.
    model = _tiny_model()
    cfg = load_config(None, ["model.weights=some/vgg16_bn.pth"])
    opt = build_optimizer(model, cfg)
    assert [g["name"] for g in opt.param_groups] == ["attention", "branches"]
    assert not any(p.requires_grad for p in model.encoder.parameters())


def test_frozen_random_encoder_is_refused():
    from dermogaze.training.optim import build_optimizer

    with pytest.raises(DermogazeError, match=r"-o train\.lr_encoder=1e-4"):
        build_optimizer(_tiny_model(), load_config(None, []))  # paper recipe (lr_encoder 0), no weights


def test_attention_warmup_trains_the_papers_loss_first(pipeline_cache, pipeline_tiny_run, tmp_path):
    """loss.attention_warmup: epoch 1 trains with λ = 0 (the paper's run, exactly), later epochs with the ramp."""
    from dermogaze.training import train

    run = tmp_path / "warmup"
    overrides = [f"data.cache={pipeline_cache}", "loss.attention=1.5", "loss.attention_warmup=2"]
    train(load_config("tiny", overrides), run, progress=False)
    rows, reference = _rows(run), _rows(pipeline_tiny_run)  # the reference is the same run with λ = 0
    assert [r["train_attention_weight"] for r in rows] == [0.0, 0.75]
    for k in ("train_loss", "train_diag", "train_seg", "train_cls", "train_att", "val_diag", "val_att"):
        assert rows[0][k] == reference[0][k], k  # epoch 1: the same training as λ = 0
    # validation always uses the full λ (the best epoch is chosen on the final objective)
    assert rows[0]["val_loss"] == pytest.approx(reference[0]["val_loss"] + 1.5 * reference[0]["val_att"], rel=1e-5)
    # epoch 2 trains with λ = 0.75: its loss is the paper's terms plus 0.75 L_att
    paper = 0.25 * rows[1]["train_diag"] + 0.75 * (0.75 * rows[1]["train_seg"] + 0.25 * rows[1]["train_cls"])
    assert rows[1]["train_loss"] == pytest.approx(paper + 0.75 * rows[1]["train_att"], rel=1e-4)
    assert rows[1]["train_loss"] != reference[1]["train_loss"]


def test_train_refuses_to_overwrite_a_run(pipeline_cache, pipeline_tiny_run):
    from dermogaze.training import train

    before = (pipeline_tiny_run / "metrics.jsonl").read_text()
    with pytest.raises(DermogazeError, match="--resume"):
        train(load_config("tiny", [f"data.cache={pipeline_cache}"]), pipeline_tiny_run, progress=False)
    assert (pipeline_tiny_run / "metrics.jsonl").read_text() == before


def test_a_cache_without_masks_is_refused_where_masks_are_needed(pipeline_data, tmp_path):
    """A variant with a decoder, and repeat-factor sampling (which counts the structures of each image)."""
    from dermogaze.data.cache import load_info
    from dermogaze.data.prepare import prepare
    from dermogaze.training import train

    isic = tmp_path / "isic"
    shutil.copytree(pipeline_data["isic"], isic)
    for folder in isic.glob("*_Part[12]_GroundTruth"):
        shutil.rmtree(folder)
    cache = tmp_path / "cache"
    prepare(isic, cache, size=40, progress=False)
    assert load_info(cache)["has_masks"] is False
    with pytest.raises(DataError, match="no structure masks"):
        train(load_config("tiny", [f"data.cache={cache}"]), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()
    cfg = load_config("tiny", [f"data.cache={cache}", "model.name=vgg", "train.repeat_threshold=1"])
    with pytest.raises(DataError, match=f"{cache}.*repeat_threshold"):
        train(cfg, tmp_path / "run", progress=False)


def test_image_size_larger_than_the_cache_is_refused(pipeline_cache, tmp_path):
    from dermogaze.training import train

    cfg = load_config("tiny", [f"data.cache={pipeline_cache}", "model.image_size=64"])
    with pytest.raises(DataError, match="40 px"):
        train(cfg, tmp_path / "run", progress=False)


# --------------------------------------------------------------------------------------------
# Reproducibility pieces
# --------------------------------------------------------------------------------------------
class _RandomItems(Dataset):
    """Each item draws from the three global generators, like a random augmentation does."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i):
        return (float(torch.rand(())), float(np.random.rand()), random.random())


def test_epoch_seeded_items_depend_only_on_seed_epoch_and_index():
    from dermogaze.training.seeding import EpochSeededDataset

    ds = EpochSeededDataset(_RandomItems(), seed=3)
    ds.set_epoch(1)
    forward = [ds[i] for i in range(6)]
    torch.manual_seed(123)
    np.random.seed(7)
    backward = [ds[i] for i in reversed(range(6))][::-1]
    assert forward == backward  # neither the order nor the global state matters
    assert len(set(forward)) == 6  # items differ from each other
    ds.set_epoch(2)
    assert all(a != b for a, b in zip(forward, [ds[i] for i in range(6)], strict=True))
    # The wrapper leaves the global generators where they were.
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    ds[0]
    assert torch.equal(torch.rand(3), expected)


def test_epoch_seeded_items_do_not_depend_on_loader_workers():
    from dermogaze.training.seeding import EpochSeededDataset

    ds = EpochSeededDataset(_RandomItems(), seed=0)
    ds.set_epoch(4)
    single = [tuple(float(v) for v in row) for b in DataLoader(ds, batch_size=2) for row in zip(*b, strict=True)]
    multi = [
        tuple(float(v) for v in row)
        for b in DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="fork")
        for row in zip(*b, strict=True)
    ]
    assert single == multi


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    from dermogaze.training.seeding import get_rng_state, set_rng_state

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    state = get_rng_state()
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.standard_normal())
    torch.save({"rng": state}, tmp_path / "rng.pt")
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.standard_normal())
    assert torch.equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[2] == expected[2] and got[3] == expected[3]


@pytest.mark.parametrize("n", [24, 26])
def test_distributed_shards_make_up_the_single_process_batches(n):
    """With N ranks of batch b, global batch k is single-process batch k of size N*b (engine docstring)."""
    world, per_rank, epoch = 2, 2, 3
    single = DistributedSampler(range(n), num_replicas=1, rank=0, shuffle=True, seed=0)
    single.set_epoch(epoch)
    order = list(single)
    shards = []
    for rank in range(world):
        s = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=0)
        s.set_epoch(epoch)
        shards.append(list(s))
    steps = len(shards[0]) // per_rank
    for k in range(steps):
        ranks = [set(sh[k * per_rank : (k + 1) * per_rank]) for sh in shards]
        padded = order + order[: (-n) % world]  # DistributedSampler repeats the first samples to pad
        assert set().union(*ranks) == set(padded[k * world * per_rank : (k + 1) * world * per_rank])


def test_shard_sampler_covers_each_index_once():
    from dermogaze.training.distributed import ShardSampler

    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))


# --------------------------------------------------------------------------------------------
# Repeat-factor sampling (train.repeat_threshold)
# --------------------------------------------------------------------------------------------
def test_repeat_factors_by_hand():
    from dermogaze.training.sampling import repeat_factors

    # 4 images, 3 structures: f = (3/4, 1/2, 1/4)
    present = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=bool)
    # t = 1/2: r_c = (sqrt(2/3), 1, √2), below 1 counts as 1; an image without structure gets 1
    np.testing.assert_allclose(repeat_factors(present, 0.5), [1.0, np.sqrt(2), 1.0, 1.0])
    # t = 4: r_c = (sqrt(16/3), sqrt(8), 4), each image the largest of its structures'
    np.testing.assert_allclose(repeat_factors(present, 4.0), [np.sqrt(8), 4.0, np.sqrt(16 / 3), 1.0])
    with pytest.raises(ValueError, match="threshold"):
        repeat_factors(present, 0.0)


def test_repeat_factor_sampler_draws_each_image_by_its_factor():
    from dermogaze.training.sampling import RepeatFactorSampler

    factors = np.array([1.0, 2.5, 1.0, 1.0])  # image 1: 2 or 3 draws (p = 1/2), the others 1; N = 4 kept
    sampler = RepeatFactorSampler(factors, seed=7)
    counts = np.zeros(4)
    for epoch in range(3000):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == len(sampler) == 4
        image, repeat = np.array(drawn) % 4, np.array(drawn) // 4
        assert len(set(drawn)) == 4  # the k-th repeat of an image is numbered i + k·N: no number twice
        assert all(k < np.ceil(factors[i]) for i, k in zip(image, repeat, strict=True))
        counts += np.bincount(image, minlength=4)
    # Of L = 3 + R draws (R = 2 or 3), the first N = 4 of a shuffle are kept, each draw with probability 4/L:
    # E[count of image 1] = ½(2·4/5 + 3·4/6) = 1.8, of each other image ½(4/5 + 4/6) = 0.7333
    np.testing.assert_allclose(counts / 3000, [0.7333, 1.8, 0.7333, 0.7333], rtol=0.03)

    again = RepeatFactorSampler(factors, seed=7)
    again.set_epoch(2999)
    assert list(again) == drawn  # a function of (seed, epoch) alone: a resumed run draws the same epochs


def test_repeat_factor_sampler_shards_like_distributed_sampler():
    from dermogaze.training.sampling import RepeatFactorSampler

    factors = np.array([1.0, 3.0, 1.0, 1.5, 1.0])
    single = RepeatFactorSampler(factors, seed=1)
    single.set_epoch(4)
    order = single.epoch_indices().tolist()
    shards = []
    for rank in range(3):
        s = RepeatFactorSampler(factors, num_replicas=3, rank=rank, seed=1)
        s.set_epoch(4)
        shards.append(list(s))
    assert [len(sh) for sh in shards] == [2, 2, 2]
    padded = order + order[:1]  # 5 draws padded to 6 from the start
    assert [padded[r::3] for r in range(3)] == shards


def test_epoch_seeded_repeats_are_the_image_with_their_own_augmentation():
    from dermogaze.training.seeding import EpochSeededDataset

    class Indexed(Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return i, float(torch.rand(()))

    ds = EpochSeededDataset(Indexed(), seed=0)
    assert ds[2][0] == ds[2 + 6][0] == ds[2 + 12][0] == 2
    assert len({ds[2][1], ds[2 + 6][1], ds[2 + 12][1]}) == 3


def test_training_draws_by_repeat_factor(pipeline_cache, tmp_path):
    from dermogaze.data.cache import load_split
    from dermogaze.training import train
    from dermogaze.training.distributed import setup_distributed
    from dermogaze.training.sampling import RepeatFactorSampler
    from dermogaze.training.train import _make_loaders

    cfg = load_config("tiny", [f"data.cache={pipeline_cache}", "train.repeat_threshold=1"])
    loaders = _make_loaders(cfg, pipeline_cache, setup_distributed("cpu"))
    assert isinstance(loaders.sampler, RepeatFactorSampler)
    masks = np.asarray(load_split(pipeline_cache, "train").masks)
    present = masks.reshape(*masks.shape[:2], -1).any(-1)  # (N, K)
    fraction = present.mean(0)
    expected = [max([np.sqrt(1 / fraction[k]) for k in np.flatnonzero(row)], default=1.0) for row in present]
    np.testing.assert_allclose(loaders.sampler.factors.numpy(), np.maximum(1.0, expected))
    assert len(loaders.train) == len(loaders.train_set) // cfg.train.batch_size + bool(len(loaders.train_set) % 4)

    # an interrupted run resumes to the uninterrupted one
    full = train(cfg, tmp_path / "full", progress=False)["history"]
    assert all(np.isfinite(row["train_loss"]) for row in full)
    one = load_config("tiny", [f"data.cache={pipeline_cache}", "train.repeat_threshold=1", "train.epochs=1"])
    train(one, tmp_path / "resumed", progress=False)
    train(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert _rows(tmp_path / "resumed") == _rows(tmp_path / "full")


# --------------------------------------------------------------------------------------------
# Training options
# --------------------------------------------------------------------------------------------


def test_channels_last_training_matches_contiguous(pipeline_cache, tmp_path):
    """Same losses up to rounding (the kernels differ; Adam's first step, ~lr·sign(g), amplifies that a little)."""
    from dermogaze.training import train

    base = [f"data.cache={pipeline_cache}", "train.epochs=1", "train.max_train_batches=1"]
    a = train(load_config("tiny", base), tmp_path / "a", progress=False)["history"][0]
    b = train(load_config("tiny", [*base, "train.channels_last=true"]), tmp_path / "b", progress=False)["history"][0]
    for key in ("train_loss", "val_loss", "val_seg", "val_cls"):
        assert b[key] == pytest.approx(a[key], rel=1e-3), key


def test_cosine_schedule_follows_the_position_in_the_run(pipeline_cache, tmp_path):
    import math

    from dermogaze.training import train
    from dermogaze.training.optim import lr_schedule

    f = lr_schedule("cosine", epoch=2, epochs=4, steps=10)  # batch i of epoch 2 is step 10 + i of 40
    assert f(0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 10 / 40)))
    assert f(10) == pytest.approx(0.5)  # half way
    assert lr_schedule("constant", 3, 4, 10)(7) == 1.0
    with pytest.raises(DermogazeError, match="linear"):
        lr_schedule("linear", 1, 1, 1)

    # In a run: the rate of the last step of each epoch is logged (2 epochs of 2 steps: steps 1 and 3 of 4).
    cfg = load_config("tiny", [f"data.cache={pipeline_cache}", "train.max_train_batches=2",
                               "train.lr_schedule=cosine"])
    rows = train(cfg, tmp_path / "run", progress=False)["history"]
    for row, step in zip(rows, (1, 3), strict=True):
        assert row["lr_attention"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * step / 4)))
